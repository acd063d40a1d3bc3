//! The capture thread: a frame source runs on a thread of its own and fills a bounded queue, so
//! decoding overlaps inference and a slow model never makes memory grow.
//!
//! When the queue is full a live source (camera, network stream) drops its oldest frame and
//! counts it; a recorded source (folder, video file) waits instead, so no frame is lost. A live
//! source that ends or stalls (ffmpeg exits, the camera is unplugged) is reopened with
//! exponential backoff; its state is logged and exposed through [`CaptureStatus`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::source::{BadFrame, Frame, FrameSource};

/// One item of a source: a frame, or one that could not be read.
pub type Item = Result<Frame, BadFrame>;

/// A sendable frame source.
pub type BoxedSource = Box<dyn FrameSource + Send>;

/// Opens the source again after it ended or failed.
pub type Opener = Box<dyn FnMut() -> anyhow::Result<BoxedSource> + Send>;

/// What the capture thread does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room: nothing is lost (recorded sources).
    Block,
    /// Drop the oldest queued frame and count it (live sources: the newest frame matters).
    DropOldest,
}

/// How the capture thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Most frames waiting for inference (at least 1).
    pub capacity: usize,
    /// What happens when the queue is full.
    pub overflow: Overflow,
    /// Reopen the source when it ends (live sources, or looping a recording).
    pub restart: bool,
    /// First wait before reopening; doubled after each failed attempt.
    pub backoff_initial: Duration,
    /// Longest wait before reopening.
    pub backoff_max: Duration,
}

/// The state of the source, as the metrics endpoint shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Frames are flowing.
    Running = 0,
    /// The source ended or failed and is being reopened.
    Retrying = 1,
    /// The source ended for good.
    Ended = 2,
}

/// Counters of the capture thread, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct CaptureStatus {
    dropped: AtomicU64,
    restarts: AtomicU64,
    state: AtomicU8,
}

impl CaptureStatus {
    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Times the source was reopened (successfully or not).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The source's current state.
    pub fn state(&self) -> SourceState {
        match self.state.load(Ordering::Relaxed) {
            0 => SourceState::Running,
            1 => SourceState::Retrying,
            _ => SourceState::Ended,
        }
    }

    fn set_state(&self, state: SourceState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// What [`Capture::next_timeout`] found (and, with `T` an inferred frame, what the staged
/// loop's [`StagedFrames::next_timeout`](crate::staged::StagedFrames::next_timeout) found).
#[derive(Debug)]
pub enum Next<T = Item> {
    /// The next item, oldest first.
    Item(T),
    /// Nothing arrived within the timeout; the source is still open or being reopened.
    Idle,
    /// The source ended and every queued item was taken.
    Ended,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    ended: bool,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    capacity: usize,
    status: Arc<CaptureStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock means the other side panicked; the queue itself is still consistent.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item`; false when the consumer asked the thread to stop.
    fn push(&self, item: Item, overflow: Overflow) -> bool {
        let mut queue = self.lock();
        loop {
            if queue.stop {
                return false;
            }
            if queue.items.len() < self.capacity {
                queue.items.push_back(item);
                self.changed.notify_all();
                return true;
            }
            match overflow {
                Overflow::DropOldest => {
                    if let Some(Ok(old)) = queue.items.pop_front() {
                        tracing::debug!(frame = %old.id, "queue full: dropping the oldest frame");
                    }
                    self.status.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Overflow::Block => {
                    queue = self.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Waits `delay` unless asked to stop first; false when asked to stop.
    fn pause(&self, delay: Duration) -> bool {
        let queue = self.lock();
        let (queue, _) = self
            .changed
            .wait_timeout_while(queue, delay, |q| !q.stop)
            .unwrap_or_else(|p| p.into_inner());
        !queue.stop
    }

    fn finish(&self) {
        self.status.set_state(SourceState::Ended);
        self.lock().ended = true;
        self.changed.notify_all();
    }
}

/// A source running on its own thread behind a bounded queue.
pub struct Capture {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("capacity", &self.shared.capacity).finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts the capture thread on an already opened source (so that a source that cannot
    /// be opened at all is a start-up error); `reopen` opens it again after it ended.
    ///
    /// # Errors
    /// When the capacity is zero or the thread cannot be started.
    pub fn start(
        source: BoxedSource,
        reopen: Opener,
        options: CaptureOptions,
    ) -> anyhow::Result<Self> {
        if options.capacity == 0 {
            anyhow::bail!("expected a capture queue of at least 1 frame, found 0");
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            capacity: options.capacity,
            status: Arc::new(CaptureStatus::default()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("qualmd-capture".into())
            .spawn(move || capture_loop(&thread_shared, source, reopen, options))
            .context("cannot start the capture thread")?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// The counters of the capture thread.
    pub fn status(&self) -> Arc<CaptureStatus> {
        Arc::clone(&self.shared.status)
    }

    /// Takes the oldest queued item, waiting at most `timeout` for one.
    pub fn next_timeout(&self, timeout: Duration) -> Next {
        let queue = self.shared.lock();
        let (mut queue, _) = self
            .shared
            .changed
            .wait_timeout_while(queue, timeout, |q| q.items.is_empty() && !q.ended)
            .unwrap_or_else(|p| p.into_inner());
        match queue.items.pop_front() {
            Some(item) => {
                // A blocked producer is waiting for this room.
                self.shared.changed.notify_all();
                Next::Item(item)
            }
            None if queue.ended => Next::Ended,
            None => Next::Idle,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();

        // The thread may sit in a read from a stalled stream; wait a bounded time for it and
        // leave it behind otherwise (the process is ending, and ffmpeg dies with its pipe).
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("capture thread still blocked in its source after 2 s: leaving it");
        }
    }
}

/// Reads the source into the queue; reopens it with backoff when `restart` is set.
fn capture_loop(shared: &Shared, first: BoxedSource, mut reopen: Opener, options: CaptureOptions) {
    let mut source = Some(first);
    let mut delay = options.backoff_initial;
    // A blocking queue means a recording (live sources drop frames instead): looped, it ends
    // at every pass by design, which is worth one line in the log, not a warning per pass.
    let recording = options.overflow == Overflow::Block;
    let mut passes = 1u64;
    loop {
        let current = match source.take() {
            Some(current) => current,
            None => match reopen() {
                Ok(current) => {
                    tracing::info!("frame source reopened");
                    current
                }
                Err(error) => {
                    tracing::warn!(
                        "cannot reopen the frame source, next try in {delay:?}: {error:#}"
                    );
                    if !shared.pause(delay) {
                        return;
                    }
                    delay = (delay * 2).min(options.backoff_max);
                    shared.status.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        shared.status.set_state(SourceState::Running);

        for item in current {
            if item.is_ok() {
                // A frame came through: the source works again, so the next stall starts
                // with a short wait.
                delay = options.backoff_initial;
            }
            if !shared.push(item, options.overflow) {
                return;
            }
        }

        if !options.restart {
            tracing::info!("frame source ended");
            shared.finish();
            return;
        }
        shared.status.set_state(SourceState::Retrying);
        shared.status.restarts.fetch_add(1, Ordering::Relaxed);
        passes += 1;
        if !recording {
            tracing::warn!("frame source ended or stalled, reopening in {delay:?}");
        } else if passes == 2 {
            tracing::info!(
                "recording ended, looping it: later passes read the same frames again (same \
                 names and records; set [policy] duplicate_distance to ledger them as duplicates)"
            );
        } else {
            tracing::debug!(pass = passes, "recording ended, looping it");
        }
        if !shared.pause(delay) {
            return;
        }
        delay = (delay * 2).min(options.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn frame(index: u32) -> Item {
        Ok(Frame { id: format!("f{index}"), origin: String::new(), image: RgbImage::new(1, 1) })
    }

    /// A source of `count` frames; each `next` waits `delay` (a slow camera).
    fn counted(count: u32, delay: Duration) -> BoxedSource {
        Box::new((0..count).map(move |index| {
            thread::sleep(delay);
            frame(index)
        }))
    }

    fn options(capacity: usize, overflow: Overflow, restart: bool) -> CaptureOptions {
        CaptureOptions {
            capacity,
            overflow,
            restart,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        }
    }

    fn no_reopen() -> Opener {
        Box::new(|| anyhow::bail!("not reopened in this test"))
    }

    fn drain(capture: &Capture) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            match capture.next_timeout(Duration::from_secs(5)) {
                Next::Item(item) => ids.push(item.unwrap().id),
                Next::Ended => return ids,
                Next::Idle => panic!("no item within 5 s"),
            }
        }
    }

    #[test]
    fn a_blocking_queue_loses_nothing_behind_a_slow_consumer() {
        let source = counted(20, Duration::ZERO);
        let capture = Capture::start(source, no_reopen(), options(2, Overflow::Block, false));
        let capture = capture.unwrap();
        thread::sleep(Duration::from_millis(50));
        let ids = drain(&capture);
        let expected: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        assert_eq!(ids, expected);
        assert_eq!(capture.status().dropped(), 0);
        assert_eq!(capture.status().state(), SourceState::Ended);
    }

    #[test]
    fn a_live_queue_drops_the_oldest_frames_and_counts_them() {
        let source = counted(50, Duration::ZERO);
        let capture = Capture::start(source, no_reopen(), options(3, Overflow::DropOldest, false));
        let capture = capture.unwrap();

        // Let the producer run to its end before taking anything: it keeps only the newest 3.
        let deadline = Instant::now() + Duration::from_secs(5);
        while capture.status().state() != SourceState::Ended && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let ids = drain(&capture);
        assert_eq!(ids, ["f47", "f48", "f49"]);
        assert_eq!(capture.status().dropped(), 47, "every frame is either taken or counted");
    }

    #[test]
    fn an_ended_live_source_is_reopened_with_backoff() {
        let opened = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&opened);
        // The first two reopen attempts fail (camera gone), then it comes back for good.
        let reopen: Opener = Box::new(move || {
            let attempt = counter.fetch_add(1, Ordering::SeqCst);
            if attempt < 2 {
                anyhow::bail!("camera gone (attempt {attempt})");
            }
            Ok(counted(2, Duration::ZERO))
        });
        let capture =
            Capture::start(counted(2, Duration::ZERO), reopen, options(8, Overflow::Block, true));
        let capture = capture.unwrap();

        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ids.len() < 6 && Instant::now() < deadline {
            if let Next::Item(item) = capture.next_timeout(Duration::from_millis(100)) {
                ids.push(item.unwrap().id);
            }
        }
        assert_eq!(ids, ["f0", "f1", "f0", "f1", "f0", "f1"]);
        assert!(opened.load(Ordering::SeqCst) >= 4, "two failures, then two good reopens");
        assert!(capture.status().restarts() >= 4);
    }

    #[test]
    fn dropping_the_capture_stops_a_blocked_producer() {
        let capture = Capture::start(
            counted(1_000_000, Duration::ZERO),
            no_reopen(),
            options(1, Overflow::Block, true),
        );
        let capture = capture.unwrap();
        assert!(matches!(capture.next_timeout(Duration::from_secs(5)), Next::Item(Ok(_))));
        let started = Instant::now();
        drop(capture);
        assert!(started.elapsed() < Duration::from_secs(1), "the producer saw the stop flag");
    }
}
