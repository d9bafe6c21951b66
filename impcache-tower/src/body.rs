//! [`ResponseBody`]: what the layer's responses carry, a stored body or the handler's, with the
//! copy kept for the cache of one that streams (`copy.rs`), read ahead of the client
//! (`ahead.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::ahead::{read_ahead, Ahead};
use crate::copy::{BoxError, StreamCopy};

pin_project! {
    /// The body of a response that went through [`CacheLayer`](crate::CacheLayer): a stored or
    /// buffered body, the handler's body untouched (uncacheable responses stream through), or the
    /// chunks read while deciding followed by the rest of the handler's body (a response larger
    /// than the size limit, or a cacheable one still arriving, streamed to the client while a
    /// copy is kept for the cache).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        // A HEAD response's: no data, and no length of its own unless the GET's is known (then
        // its `Content-Length` says it): an exact 0 made axum and hyper write `0` or nothing.
        Headless { length_known: bool },
        Inner { #[pin] body: B },
        Replay {
            frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
            rest: Option<Pin<Box<B>>>,
            // The size the body declared before any of it was read, less what the client has
            // been sent: its size hint.
            left: SizeHint,
            // The copy of a cacheable body, kept while it is being streamed (boxed: every
            // response, hits too, moves a `ResponseBody` around).
            copy: Option<Box<StreamCopy>>,
        },
        // A cacheable body read ahead of the client while its copy is kept (see `ahead.rs`).
        Ahead {
            ahead: Ahead<B>,
            // As `Replay`'s.
            left: SizeHint,
        },
    }
}

/// Polls a replayed body: the frames already read, then the rest of the body, followed by its
/// copy (when one is kept). `left` loses what is sent.
fn poll_replay<B>(
    frames: &mut VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: &mut Option<Pin<Box<B>>>,
    copy: &mut Option<Box<StreamCopy>>,
    left: &mut SizeHint,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let polled = ready!(poll_next(frames, rest, copy, cx));
    sent(left, polled.as_ref());
    Poll::Ready(polled)
}

/// Takes a frame sent to the client (`polled`) off `left`.
fn sent(left: &mut SizeHint, polled: Option<&Result<Frame<Bytes>, BoxError>>) {
    if let Some(Ok(frame)) = polled {
        let sent = frame.data_ref().map_or(0, |data| data.len() as u64);
        *left = hint_less(left, sent);
    }
}

/// `hint` less `sent` bytes.
fn hint_less(hint: &SizeHint, sent: u64) -> SizeHint {
    let mut less = SizeHint::new();
    less.set_lower(hint.lower().saturating_sub(sent));
    if let Some(upper) = hint.upper() {
        // Not below the lower bound: both lose `sent`, or fall to 0.
        less.set_upper(upper.saturating_sub(sent));
    }
    less
}

/// The next frame of a replayed body ([`poll_replay`]).
fn poll_next<B>(
    frames: &mut VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: &mut Option<Pin<Box<B>>>,
    copy: &mut Option<Box<StreamCopy>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(frame) = frames.pop_front() {
        return Poll::Ready(Some(frame));
    }
    let Some(body) = rest else {
        return Poll::Ready(None);
    };
    let polled = ready!(body.as_mut().poll_frame(cx)).map(|f| f.map_err(Into::into));
    // The end: `None`, or a frame after which the body says it has ended (a client may then stop
    // polling before `None`).
    let ended = polled.is_none() || body.is_end_stream();
    if ended {
        *rest = None;
    }
    if copy
        .as_mut()
        .is_some_and(|kept| !kept.follow(polled.as_ref(), ended))
    {
        *copy = None;
    }
    Poll::Ready(polled)
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Headless { .. } => "Headless",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
            Kind::Ahead { .. } => "Ahead",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

/// An empty body, as tower-http's middleware (`TimeoutLayer`, `CorsLayer`, ...) makes for the
/// responses it answers itself: those fit above a [`CacheLayer`](crate::CacheLayer) in one
/// `ServiceBuilder`.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::full(Bytes::new())
    }
}

impl<B> ResponseBody<B> {
    /// A body of `data` (a hit, or a buffered miss); none when `data` is empty (HEAD, 304).
    pub(crate) fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        ResponseBody {
            kind: Kind::Full { data },
        }
    }

    /// The body of a HEAD response, which carries none: its size is unknown unless
    /// `length_known` (the response's `Content-Length` gives the GET's), so that a server does not
    /// write a length of 0 for a GET whose length is unknown.
    pub(crate) fn headless(length_known: bool) -> Self {
        ResponseBody {
            kind: Kind::Headless { length_known },
        }
    }

    /// The handler's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// Frames already read, then the rest of `rest` (when the body has not ended); `hint`: the
    /// body's size hint before it was read.
    pub(crate) fn replay(
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: Option<Pin<Box<B>>>,
        hint: SizeHint,
    ) -> Self {
        ResponseBody {
            kind: Kind::Replay {
                frames,
                rest,
                left: hint,
                copy: None,
            },
        }
    }
}

impl<B> ResponseBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Frames already read (and copied into `copy`), then the rest of `rest`, streamed to the
    /// client while `copy` keeps it for the cache; `hint`: the body's size hint before it was
    /// read. The rest is read ahead of the client while the copy is kept (`ahead.rs`); outside a
    /// tokio runtime, as the client reads it.
    pub(crate) fn streaming(
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: Pin<Box<B>>,
        copy: StreamCopy,
        hint: SizeHint,
    ) -> Self {
        let kind = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Kind::Ahead {
                ahead: read_ahead(frames, rest, copy, &runtime),
                left: hint,
            },
            Err(_) => Kind::Replay {
                frames,
                rest: Some(rest),
                left: hint,
                copy: Some(Box::new(copy)),
            },
        };
        ResponseBody { kind }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Headless { .. } => Poll::Ready(None),
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Replay {
                frames,
                rest,
                left,
                copy,
            } => poll_replay(frames, rest, copy, left, cx),
            KindProj::Ahead { ahead, left } => {
                let polled = ready!(ahead.poll_frame(cx));
                sent(left, polled.as_ref());
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Headless { .. } => true,
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay { frames, rest, .. } => {
                frames.is_empty() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
            Kind::Ahead { ahead, .. } => ahead.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Headless { length_known: true } => SizeHint::with_exact(0),
            Kind::Headless {
                length_known: false,
            } => SizeHint::default(),
            Kind::Inner { body } => body.size_hint(),
            // What the body declared before it was read, less what was sent: as the handler sent
            // it. (Adding the frames read to the rest's hint counted them twice for a body whose
            // hint does not shrink, and hyper wrote a `Content-Length` too long; an exact length
            // of the frames read made a server stop before a body error that followed them, and
            // the client got a complete response.)
            Kind::Replay { left, .. } | Kind::Ahead { left, .. } => *left,
        }
    }
}
