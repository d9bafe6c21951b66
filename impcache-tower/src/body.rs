//! [`ResponseBody`]: what the layer's responses carry; reading a handler's body for the cache
//! ([`buffer`]), and the copy kept of one that streams ([`StreamCopy`]).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use impcache::Cache;

use crate::ahead::{read_ahead, Ahead};
use crate::policy::{declared_length, NotStored};
use crate::store::Unfinished;

/// The error of a [`ResponseBody`]: the inner body's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

/// Whether a body is known to be larger than `limit` before it is read: by its `Content-Length`
/// or its size hint.
pub(crate) fn exceeds<B: Body>(headers: &HeaderMap, body: &B, limit: usize) -> bool {
    let limit = limit as u64;
    declared_length(headers).is_some_and(|len| len > limit) || body.size_hint().lower() > limit
}

/// Whether a body of `size` bytes is not the length its response declared: an incomplete (or
/// overlong) response, never stored (RFC 9111 §3.3), and sent as the handler sent it.
fn not_as_declared(declared: Option<u64>, size: usize) -> bool {
    declared.is_some_and(|declared| declared != size as u64)
}

/// A body read up to the size limit, as far as it is there without waiting.
pub(crate) enum Buffered<B> {
    Complete(Bytes),
    /// Not storable: the frames read so far, then the rest of the body (if it has not ended).
    Partial {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: Option<Pin<Box<B>>>,
        reason: NotStored,
        hint: SizeHint,
    },
    /// Still arriving: the data frames read so far (`size` bytes), then the rest of the body.
    Streaming {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        chunks: Vec<Bytes>,
        size: usize,
        rest: Pin<Box<B>>,
        hint: SizeHint,
    },
}

/// Reads the frames of `body` that are ready now, up to `limit` bytes: a body that is all there
/// (the usual handler response) is complete, one still being produced is streamed. `declared`:
/// the length its `Content-Length` declares (a body of another length is not stored). A body not
/// read to its end comes back with its size hint as it was before it was read.
pub(crate) async fn buffer<B>(body: B, limit: usize, declared: Option<u64>) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let hint = body.size_hint();
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut chunks = Vec::new();
    let mut size = 0usize;
    let mut trailers = false;
    while !body.is_end_stream() {
        // One poll: `Pending` means the rest is still being produced.
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        match polled {
            Poll::Pending => {
                return Buffered::Streaming {
                    frames,
                    chunks,
                    size,
                    rest: body,
                    hint,
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(error))) => {
                frames.push_back(Err(error.into()));
                return Buffered::Partial {
                    frames,
                    rest: None,
                    reason: NotStored::BodyError,
                    hint,
                };
            }
            Poll::Ready(Some(Ok(frame))) => {
                match frame.data_ref() {
                    Some(data) => {
                        size = size.saturating_add(data.len());
                        chunks.push(data.clone());
                    }
                    None => trailers = true,
                }
                frames.push_back(Ok(frame));
                if size > limit {
                    return Buffered::Partial {
                        frames,
                        rest: Some(body),
                        reason: NotStored::TooLarge,
                        hint,
                    };
                }
                if trailers {
                    break;
                }
            }
        }
    }
    if trailers {
        return Buffered::Partial {
            frames,
            rest: Some(body),
            reason: NotStored::Trailers,
            hint,
        };
    }
    if not_as_declared(declared, size) {
        return Buffered::Partial {
            frames,
            rest: None,
            reason: NotStored::LengthMismatch,
            hint,
        };
    }
    Buffered::Complete(concat(chunks, size))
}

/// Reads `body` as a server sends it, for nobody: to its end, or until it has given the length
/// it declared (`declared`, its response's `Content-Length`, else its size hint), where a server
/// stops reading it (so the copy of a streamed body is complete then, see [`StreamCopy`], and a
/// background call stores as a client's does).
pub(crate) async fn read_as_sent<B>(body: B, declared: Option<u64>) -> Result<(), B::Error>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut read = 0u64;
    while !body.is_end_stream()
        && body.size_hint().exact() != Some(0)
        && declared.is_none_or(|declared| read < declared)
    {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return Err(error),
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |data| data.len() as u64);
            }
        }
    }
    Ok(())
}

/// The copy of a streamed body kept for the cache, up to the size limit. Completed, it is
/// stored; given up (too large, trailers, another length than declared), the flight's waiters
/// call the handler themselves; failed (a body error) or dropped unfinished (the client went away
/// mid-body), nothing is stored and the flight is abandoned (its waiters elect a new leader, see
/// [`Unfinished::give_up`]). Dropped holding all the bytes its response declared, it is complete:
/// a server stops polling a body once it has written its declared length (hyper then drops it,
/// before the `None` that would end it, when the body does not say it has ended).
pub(crate) struct StreamCopy {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    /// The length the response declares (its `Content-Length`, else an exact size hint): a body
    /// of another length is not stored.
    declared: Option<u64>,
    /// `None` once the copy is finished or given up.
    unfinished: Option<Unfinished>,
    /// The stored response this answer replaces (a stale one it revalidates), removed when the
    /// copy is given up for the response's own reasons (too large, trailers), not for a failure.
    replaces: Option<(Cache, String)>,
}

impl StreamCopy {
    /// A copy holding `chunks` (the data read so far, `size` bytes, within `limit`) of a body
    /// declared `declared` bytes long.
    pub(crate) fn new(
        (chunks, size): (Vec<Bytes>, usize),
        limit: usize,
        declared: Option<u64>,
        unfinished: Unfinished,
    ) -> Self {
        StreamCopy {
            chunks,
            size,
            limit,
            declared,
            unfinished: Some(unfinished),
            replaces: None,
        }
    }

    /// The copy of an answer that replaces the stored response at `replaces` (see the field).
    pub(crate) fn replacing(mut self, replaces: Option<(Cache, String)>) -> Self {
        self.replaces = replaces;
        self
    }

    /// Follows one frame polled from the body (`None`: the end); `ended` when the body has
    /// ended with it. Returns whether the copy is still being kept.
    pub(crate) fn follow(
        &mut self,
        polled: Option<&Result<Frame<Bytes>, BoxError>>,
        ended: bool,
    ) -> bool {
        match polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    self.size = self.size.saturating_add(data.len());
                    if self.size > self.limit {
                        // Too large: the rest streams through, unstored, and is not held.
                        self.give_up(NotStored::TooLarge);
                        return false;
                    }
                    self.chunks.push(data.clone());
                }
                // Trailers: never stored.
                None => {
                    self.give_up(NotStored::Trailers);
                    return false;
                }
            },
            Some(Err(_)) => {
                self.give_up(NotStored::BodyError);
                return false;
            }
            None => {}
        }
        if ended {
            if not_as_declared(self.declared, self.size) {
                self.give_up(NotStored::LengthMismatch);
            } else {
                self.complete();
            }
            return false;
        }
        true
    }

    fn give_up(&mut self, reason: NotStored) {
        let Some(unfinished) = self.unfinished.take() else {
            return;
        };
        if let Some((cache, key)) = self.replaces.take().filter(|_| !reason.is_failure()) {
            // In the background: this is a body's poll. Outside a runtime it expires by itself.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { crate::revalidate::remove(&cache, &key).await });
            }
        }
        unfinished.give_up(reason);
    }

    /// Whether the copy holds all the bytes its response declared (then it is complete: see the
    /// type's docs).
    pub(crate) fn holds_declared_length(&self) -> bool {
        self.declared == Some(self.size as u64)
    }

    /// Publishes the copy to the flight's waiters and stores it.
    pub(crate) fn complete(&mut self) {
        let Some(unfinished) = self.unfinished.take() else {
            return;
        };
        let body = concat(std::mem::take(&mut self.chunks), self.size);
        let (_, _, storing) = unfinished.finish(body);
        if storing.is_some() {
            // Its waiters got it; nothing outside a tokio runtime can run the store.
            tracing::debug!("impcache-tower: no tokio runtime, streamed response not stored");
        }
    }
}

impl Drop for StreamCopy {
    fn drop(&mut self) {
        // Unfinished: complete when it holds the declared length (see the type's docs); else the
        // client went away mid-body, and `Unfinished`'s own drop abandons the flight.
        if self.holds_declared_length() {
            self.complete();
        }
    }
}

/// `chunks` (of `size` bytes in all) as one `Bytes`, copied only when there are several.
fn concat(chunks: Vec<Bytes>, size: usize) -> Bytes {
    let mut chunks = chunks.into_iter();
    match (chunks.next(), chunks.next()) {
        (None, _) => Bytes::new(),
        (Some(only), None) => only,
        (Some(first), Some(second)) => {
            let mut all = BytesMut::with_capacity(size);
            all.extend_from_slice(&first);
            all.extend_from_slice(&second);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
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
