//! The staged frame loop: tract never waits for anything but the next prepared input.
//!
//! Three stages run at once, each on its own thread, joined by bounded channels so that only a
//! few frames are in flight (the capture queue comes on top):
//!
//! - prepare (thread `qualmd-prepare`): takes decoded frames from the capture thread and
//!   writes each into one of [`INPUTS`] recycled input tensors;
//! - inference (thread `qualmd-inference`): runs tract on the prepared tensor and hands the
//!   tensor back to the prepare stage through a return channel;
//! - the caller's thread: statistics, gate, store and ledger, in frame order
//!   ([`StagedFrames::next_timeout`]).
//!
//! A frame that fails in a stage travels on as a failure and is ledgered in its place. When the
//! caller stops (signal, `max_frames`, the source ended) the stages are told to stop and are
//! joined; every wait in them is bounded or ends when a neighbour goes away, so none hangs. A
//! stage that panics ends the others and the run returns an error naming it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use tract_onnx::prelude::{TValue, Tensor};

use crate::capture::{Capture, Next};
use crate::model::{Inference, InputPreparer, new_input, write_input};
use crate::source::{BadFrame, Frame};

/// Input tensors in circulation: one being prepared while tract runs on the other.
pub const INPUTS: usize = 2;

/// Inferred frames that may wait for the statistics stage: room for the inference stage to go
/// on while a kept frame's record is written (each waiting frame is a decoded frame in memory).
pub const INFERRED_QUEUE: usize = 1;

/// How long a stage waits before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// A frame after the inference stage.
#[derive(Debug)]
pub struct Inferred {
    /// The decoded frame.
    pub frame: Frame,
    /// The model's first output, or why the frame could not be prepared or run.
    pub output: anyhow::Result<TValue>,
    /// Time tract took for this frame (zero when it did not run).
    pub inference: Duration,
}

impl Inferred {
    /// `frame`, which could not be prepared or run: `error` goes on in its place.
    pub fn failed(frame: Frame, error: anyhow::Error) -> Self {
        Self { frame, output: Err(error), inference: Duration::ZERO }
    }
}

/// One item of the staged loop, in source order: an inferred frame, or one that could not be
/// read.
pub type StagedItem = Result<Inferred, BadFrame>;

/// What the prepare stage hands to the inference stage.
enum Job {
    /// A frame and its prepared input.
    Run { frame: Frame, input: Arc<Tensor> },
    /// A frame that failed before inference, passed on in its place, with the input tensor
    /// it held (to go back into circulation).
    Skip { item: StagedItem, input: Option<Arc<Tensor>> },
}

/// The receiving end of the staged loop, on the caller's thread.
#[derive(Debug)]
pub struct StagedFrames {
    inferred: Receiver<StagedItem>,
}

impl StagedFrames {
    /// Takes the next item in source order, waiting at most `timeout`. [`Next::Ended`] once the
    /// source ended and every frame came through (or a stage stopped; the run then returns
    /// its error).
    pub fn next_timeout(&self, timeout: Duration) -> Next<StagedItem> {
        match self.inferred.recv_timeout(timeout) {
            Ok(item) => Next::Item(item),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Ended,
        }
    }
}

/// Runs the prepare and inference stages on frames from `capture` while `consume` takes the
/// inferred frames on the calling thread; stops and joins both stages when `consume` returns.
///
/// # Errors
/// `consume`'s error, or, when `consume` succeeded, an error naming a stage that panicked.
pub fn run_staged<T>(
    capture: &Capture,
    preparer: InputPreparer,
    inference: &mut Inference,
    consume: impl FnOnce(&StagedFrames) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stop = AtomicBool::new(false);
    let (pool_sender, pool) = mpsc::sync_channel(INPUTS);
    for _ in 0..INPUTS {
        pool_sender.send(new_input(preparer.shape())?).context("input pool closed at start")?;
    }
    // A rendezvous: the prepare stage hands over a frame only when tract takes it.
    let (job_sender, jobs) = mpsc::sync_channel(0);
    let (inferred_sender, inferred) = mpsc::sync_channel(INFERRED_QUEUE);

    thread::scope(|scope| {
        let stop = &stop;
        let prepare = thread::Builder::new()
            .name("qualmd-prepare".into())
            .spawn_scoped(scope, move || prepare_stage(capture, preparer, &pool, &job_sender, stop))
            .context("cannot start the prepare thread")?;
        let infer = thread::Builder::new()
            .name("qualmd-inference".into())
            .spawn_scoped(scope, move || {
                inference_stage(inference, &jobs, &pool_sender, &inferred_sender);
            })
            .context("cannot start the inference thread")?;

        let frames = StagedFrames { inferred };
        let result = consume(&frames);

        // Dropping the receiver ends a send the inference stage may be blocked in; that in
        // turn ends the prepare stage's send, and the flag its other waits.
        stop.store(true, Ordering::Relaxed);
        drop(frames);
        let stages = [("prepare", joined(prepare)), ("inference", joined(infer))];
        let result = result?;
        for (stage, outcome) in stages {
            if let Err(message) = outcome {
                anyhow::bail!("the {stage} stage stopped: it panicked: {message}");
            }
        }
        Ok(result)
    })
}

/// Joins a stage; its panic message when it panicked.
fn joined(handle: ScopedJoinHandle<'_, ()>) -> Result<(), String> {
    handle.join().map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Stage one: frames from the capture thread, each prepared into a free input tensor.
fn prepare_stage(
    capture: &Capture,
    mut preparer: InputPreparer,
    pool: &Receiver<Arc<Tensor>>,
    jobs: &SyncSender<Job>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let job = match capture.next_timeout(POLL) {
            Next::Idle => continue,
            Next::Ended => return,
            Next::Item(Err(bad)) => Job::Skip { item: Err(bad), input: None },
            Next::Item(Ok(frame)) => {
                let Some(mut input) = free_input(pool, stop) else { return };
                match write_input(&mut preparer, &frame.image, &mut input) {
                    Ok(()) => Job::Run { frame, input },
                    Err(error) => {
                        Job::Skip { item: Ok(Inferred::failed(frame, error)), input: Some(input) }
                    }
                }
            }
        };
        if jobs.send(job).is_err() {
            return;
        }
    }
}

/// Waits for an input tensor the inference stage gave back; `None` when asked to stop or the
/// inference stage is gone.
fn free_input(pool: &Receiver<Arc<Tensor>>, stop: &AtomicBool) -> Option<Arc<Tensor>> {
    while !stop.load(Ordering::Relaxed) {
        match pool.recv_timeout(POLL) {
            Ok(input) => return Some(input),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
    None
}

/// Stage two: tract on each prepared input, nothing else. Ends when the prepare stage ends
/// (after passing on what it sent) or the statistics stage stops taking frames.
fn inference_stage(
    inference: &mut Inference,
    jobs: &Receiver<Job>,
    pool: &SyncSender<Arc<Tensor>>,
    inferred: &SyncSender<StagedItem>,
) {
    for job in jobs {
        let item = match job {
            Job::Run { frame, input } => {
                let started = Instant::now();
                let output = inference.run(&input);
                let elapsed = started.elapsed();
                // Never blocks: the pool holds every tensor there is. An error means the
                // prepare stage is gone, and the tensor with it.
                let _ = pool.try_send(input);
                Ok(Inferred { frame, output, inference: elapsed })
            }
            Job::Skip { item, input } => {
                if let Some(input) = input {
                    let _ = pool.try_send(input);
                }
                item
            }
        };
        if inferred.send(item).is_err() {
            return;
        }
    }
}
