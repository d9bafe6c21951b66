//! Reading a streamed body ahead of its client while the cache keeps a copy of it: the handler's
//! body is read at its own pace, in a task of its own, so that the copy completes (and the
//! flight's waiters get it) however slowly the leading request's client reads. nginx does the
//! same: it reads an upstream response into its cache at the upstream's pace.
//!
//! The task reads ahead only while the copy is kept, which holds at most the size limit, and at
//! most [`AHEAD_FRAMES`] frames ahead of the client: once the copy is complete or given up (too
//! large, trailers, a body error), the rest of the body goes back to the client's side, which
//! reads it at the client's pace as an uncached body streams. A client that goes away stops the
//! task (the copy is then dropped unfinished, as before). The bound also stops the work: with an
//! unbounded channel, a body of 1-byte frames always ready was read on to the size limit for a
//! client reading nothing, and a current-thread server answered another request only after 0.9 s
//! (found by a probe).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::copy::{BoxError, StreamCopy};

/// The most frames read ahead of the client: a body of tiny frames held about 100 bytes per
/// frame while the client did not read (a probe: 107 MiB for a 1 MiB body of 1-byte frames). With
/// frames of 256 bytes or more, the 1 MiB default size limit comes first.
const AHEAD_FRAMES: usize = 4096;

/// What the reading task sends the client's side.
enum Message<B> {
    Frame(Result<Frame<Bytes>, BoxError>),
    /// The copy is no longer kept: the rest of the body, for the client's side to read.
    Rest(Pin<Box<B>>),
    /// The body has ended.
    End,
}

/// The client's side of a body read ahead: the frames the task read, then the rest of the body
/// once the task hands it back.
pub(crate) struct Ahead<B> {
    receiver: mpsc::Receiver<Message<B>>,
    rest: Option<Pin<Box<B>>>,
    ended: bool,
}

/// Reads `rest` ahead of its client into `copy`, after `read` (the frames read before, which the
/// client gets first), in a task of `runtime`'s, in the caller's `tracing` span (the request's:
/// the handler's body is polled in it, as without the layer).
pub(crate) fn read_ahead<B>(
    read: impl IntoIterator<Item = Result<Frame<Bytes>, BoxError>>,
    rest: Pin<Box<B>>,
    copy: StreamCopy,
    runtime: &tokio::runtime::Handle,
) -> Ahead<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (sender, receiver) = mpsc::channel(AHEAD_FRAMES);
    let read: Vec<_> = read.into_iter().map(Message::Frame).collect();
    let task = read_into_copy(read, rest, copy, sender);
    runtime.spawn(task.instrument(tracing::Span::current()));
    Ahead {
        receiver,
        rest: None,
        ended: false,
    }
}

/// The task: sends `read` on, then reads `body` into `copy` and sends each frame on, until the
/// body ends, the copy is no longer kept (then the rest of the body is sent on), or the client's
/// side is dropped.
async fn read_into_copy<B>(
    read: Vec<Message<B>>,
    mut body: Pin<Box<B>>,
    mut copy: StreamCopy,
    sender: mpsc::Sender<Message<B>>,
) where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    for message in read {
        if sender.send(message).await.is_err() {
            return;
        }
    }
    loop {
        let polled = tokio::select! {
            biased;
            () = sender.closed() => return,
            polled = body.frame() => polled.map(|frame| frame.map_err(Into::into)),
        };
        let ended = polled.is_none() || body.is_end_stream();
        let kept = copy.follow(polled.as_ref(), ended);
        if let Some(frame) = polled {
            if sender.send(Message::Frame(frame)).await.is_err() {
                return;
            }
        }
        if ended {
            let _ = sender.send(Message::End).await;
            return;
        }
        // All the length it declared: complete, as a server would stop reading here.
        let complete = kept && copy.holds_declared_length();
        if complete {
            copy.complete();
        }
        if !kept || complete {
            let _ = sender.send(Message::Rest(body)).await;
            return;
        }
    }
}

impl<B> Ahead<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(rest) = &mut self.rest {
                return rest.as_mut().poll_frame(cx).map_err(Into::into);
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(self.receiver.poll_recv(cx)) {
                Some(Message::Frame(frame)) => return Poll::Ready(Some(frame)),
                Some(Message::Rest(rest)) => self.rest = Some(rest),
                Some(Message::End) => self.ended = true,
                // The task ended without saying the body had: its runtime shut down. An error,
                // not an end, so that the client does not take a cut body for a whole one.
                None => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(
                        "impcache-tower: the task reading the response body stopped".into(),
                    )));
                }
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        match &self.rest {
            Some(rest) => rest.is_end_stream(),
            None => self.ended,
        }
    }
}
