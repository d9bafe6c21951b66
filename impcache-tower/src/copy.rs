//! The layer's copy of a handler's body: read whole when it is all there ([`buffer`]), kept
//! while it streams ([`StreamCopy`]), or read as a server would for a background call
//! ([`read_as_sent`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use impcache::Cache;

use crate::policy::{declared_length, NotStored};
use crate::store::Unfinished;

/// The error of a [`ResponseBody`](crate::ResponseBody): the inner body's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// Still arriving: the data read so far (also the frames to replay), then the rest of the
    /// body.
    Streaming {
        data: Chunks,
        rest: Pin<Box<B>>,
        hint: SizeHint,
    },
}

/// Reads the frames of `body` that are ready now, up to `limit` bytes: a body that is all there
/// (the usual handler response) is complete, one still being produced is streamed. `declared`:
/// the length its `Content-Length` declares (a body of another length is not stored). A body not
/// read to its end comes back with its size hint as it was before it was read. The data read is
/// replayed to the client as [`Chunks`] keeps it, small frames together.
pub(crate) async fn buffer<B>(body: B, limit: usize, declared: Option<u64>) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let hint = body.size_hint();
    let mut body = Box::pin(body);
    let mut data = Chunks::default();
    let partial = |mut data: Chunks, last, rest, reason| Buffered::Partial {
        frames: data.frames().chain(last).collect(),
        rest,
        reason,
        hint,
    };
    while !body.is_end_stream() {
        // One poll: `Pending` means the rest is still being produced.
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        match polled {
            Poll::Pending => {
                return Buffered::Streaming {
                    data,
                    rest: body,
                    hint,
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(error))) => {
                let error = Err(error.into());
                return partial(data, Some(error), None, NotStored::BodyError);
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(frame_data) => {
                    data.push(&frame_data);
                    if data.size() > limit {
                        return partial(data, None, Some(body), NotStored::TooLarge);
                    }
                }
                Err(trailers) => {
                    let trailers = Ok(trailers);
                    return partial(data, Some(trailers), Some(body), NotStored::Trailers);
                }
            },
        }
    }
    if not_as_declared(declared, data.size()) {
        return partial(data, None, None, NotStored::LengthMismatch);
    }
    Buffered::Complete(data.into_bytes())
}

/// Frames with less data than this are copied together where the layer keeps a body's data, not
/// kept one `Bytes` each: a body of 1-byte frames made the copy of a streamed body hold about 50
/// times its size (a probe: 54 MiB for the 1 MiB limit), and empty frames grew it without bound.
const SMALL_FRAME: usize = 1024;

/// The data read from a body, kept for a copy or a replay: frames of [`SMALL_FRAME`] bytes or
/// more as they are, smaller ones copied together.
#[derive(Default)]
pub(crate) struct Chunks {
    chunks: Vec<Bytes>,
    /// Small frames' data, copied together; after `chunks`.
    small: BytesMut,
    size: usize,
}

impl Chunks {
    /// Keeps a frame's `data`.
    fn push(&mut self, data: &Bytes) {
        self.size = self.size.saturating_add(data.len());
        if data.len() < SMALL_FRAME {
            self.small.extend_from_slice(data);
        } else {
            self.seal();
            self.chunks.push(data.clone());
        }
    }

    /// How many bytes it holds.
    fn size(&self) -> usize {
        self.size
    }

    /// Moves the small frames' data copied so far to `chunks`.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    /// The data as frames to replay (sharing it, not copied).
    pub(crate) fn frames(&mut self) -> impl Iterator<Item = Result<Frame<Bytes>, BoxError>> + '_ {
        self.seal();
        self.chunks
            .iter()
            .map(|chunk| Ok(Frame::data(chunk.clone())))
    }

    /// The data as one `Bytes`, copied only when there are several chunks.
    fn into_bytes(mut self) -> Bytes {
        self.seal();
        let mut chunks = self.chunks.into_iter();
        match (chunks.next(), chunks.next()) {
            (None, _) => Bytes::new(),
            (Some(only), None) => only,
            (Some(first), Some(second)) => {
                let mut all = BytesMut::with_capacity(self.size);
                all.extend_from_slice(&first);
                all.extend_from_slice(&second);
                for chunk in chunks {
                    all.extend_from_slice(&chunk);
                }
                all.freeze()
            }
        }
    }
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
    data: Chunks,
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
    /// A copy holding `data` (the data read so far, within `limit`) of a body declared
    /// `declared` bytes long.
    pub(crate) fn new(
        data: Chunks,
        limit: usize,
        declared: Option<u64>,
        unfinished: Unfinished,
    ) -> Self {
        StreamCopy {
            data,
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
                    self.data.push(data);
                    if self.data.size() > self.limit {
                        // Too large: the rest streams through, unstored, and is not held.
                        self.give_up(NotStored::TooLarge);
                        return false;
                    }
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
            if not_as_declared(self.declared, self.data.size()) {
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
        self.declared == Some(self.data.size() as u64)
    }

    /// Publishes the copy to the flight's waiters and stores it.
    pub(crate) fn complete(&mut self) {
        let Some(unfinished) = self.unfinished.take() else {
            return;
        };
        let body = std::mem::take(&mut self.data).into_bytes();
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
