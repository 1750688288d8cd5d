//! Compressed clusters and grains inflated on every core, written in order.
//!
//! A decoder hands [`Ordered`] its sink operations in stream order: plain
//! writes and zeroes, and *jobs* — a compressed unit (a qcow2 cluster, a
//! VMDK grain) with the closure that inflates it. Jobs run on a pool of
//! threads, one per core the process may use (its CPU affinity counts:
//! under `taskset -c 0` there is no pool and jobs run inline, as before),
//! started at the first job. Every operation reaches the sink in the order
//! given, so the disk writer still sees the stream's order and coalesces
//! it, and a corrupt unit fails at its place: nothing after it is written.
//!
//! Memory is bounded: at most [`MAX_JOBS`] jobs in flight and [`MAX_HELD`]
//! bytes held (compressed inputs, their outputs, and plain writes queued
//! behind an unfinished job); beyond either, the decoder waits for the
//! oldest job (the disk writes are on the `DiskWriter`'s write-behind
//! thread, so the decoder keeps the queue fed). Input and output buffers go
//! back and forth between the threads and are reused, allocated on the
//! decoding thread only: memory freed on another thread than the one that
//! allocated it lingers in the allocator's per-thread caches.
//! Hand-written rather than a thread-pool crate because that bound and the
//! in-order completion are the whole point.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::{self, JoinHandle};

use crate::error::{DeployError, Result};
use crate::sink::ImageSink;

/// Most jobs submitted and not yet written: with 64 KiB clusters, 2 MiB
/// queued. Deeper queues (up to 128 jobs) were no faster on 2 cores and
/// cost up to 8 MiB more of peak RSS.
pub const MAX_JOBS: usize = 16;
/// Most bytes held by queued operations (inputs plus outputs of jobs,
/// copies of plain writes waiting behind one): two jobs of 2 MiB clusters,
/// the largest qcow2 has, still run in parallel.
pub const MAX_HELD: usize = 8 << 20;
/// Most buffers kept for reuse.
const MAX_FREE: usize = 8;
/// Most inflating threads, whatever the core count.
const MAX_THREADS: usize = 8;

/// A worker's reusable decompressors.
#[derive(Debug, Default)]
pub struct Inflaters {
    raw: Option<flate2::Decompress>,
    zlib: Option<flate2::Decompress>,
}

impl Inflaters {
    /// A deflate decompressor, reset: raw (RFC 1951) or with a zlib header
    /// (RFC 1950).
    pub fn deflate(&mut self, zlib_header: bool) -> &mut flate2::Decompress {
        let slot = if zlib_header { &mut self.zlib } else { &mut self.raw };
        let d = slot.get_or_insert_with(|| flate2::Decompress::new(zlib_header));
        d.reset(zlib_header);
        d
    }
}

/// Inflates one compressed unit (the input) into the output buffer (given
/// empty): the bytes to write. Its error is the deployment's, reported when
/// its turn to be written comes.
pub type Job = Box<dyn FnOnce(&mut Inflaters, &[u8], &mut Vec<u8>) -> Result<()> + Send>;

/// How many threads inflate: the cores this process may run on.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    Job { seq: u64, offset: u64, held: usize },
}

/// A job on its way to a thread, with its buffers.
struct Task {
    seq: u64,
    job: Job,
    input: Vec<u8>,
    out: Vec<u8>,
}

/// A job done, with its buffers back.
struct Outcome {
    seq: u64,
    result: Result<()>,
    input: Vec<u8>,
    out: Vec<u8>,
}

/// Runs a job, a panic becoming an error.
fn run_job(job: Job, inflaters: &mut Inflaters, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    catch_unwind(AssertUnwindSafe(|| job(inflaters, input, out))).unwrap_or_else(|_| {
        *inflaters = Inflaters::default();
        Err(DeployError::Internal("an inflating thread panicked".into()))
    })
}

/// The inflating threads.
#[derive(Debug)]
struct Pool {
    jobs: Option<crossbeam_channel::Sender<Task>>,
    results: crossbeam_channel::Receiver<Outcome>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(threads: usize) -> Result<Pool> {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Task>();
        let (result_tx, results) = crossbeam_channel::unbounded::<Outcome>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (job_rx, result_tx) = (job_rx.clone(), result_tx.clone());
            let handle = thread::Builder::new()
                .name(format!("byoi-inflate-{i}"))
                .spawn(move || {
                    let mut inflaters = Inflaters::default();
                    for Task { seq, job, input, mut out } in job_rx {
                        let result = run_job(job, &mut inflaters, &input, &mut out);
                        if result_tx.send(Outcome { seq, result, input, out }).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| DeployError::Internal(format!("starting an inflating thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Pool { jobs: Some(jobs), results, handles })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends each thread after its current job.
        self.jobs = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A sink in front of a sink: inflates jobs on a pool and applies every
/// operation to the inner sink in the order given. Call [`Ordered::finish`]
/// at the end; dropping it discards what is still queued.
pub struct Ordered<'s> {
    sink: &'s mut dyn ImageSink,
    threads: usize,
    pool: Option<Pool>,
    /// Jobs inflate here when there is no pool.
    inline: Inflaters,
    /// Operations not yet applied, oldest first.
    queue: VecDeque<Op>,
    /// Finished jobs waiting for their turn, by sequence number.
    done: BTreeMap<u64, (Result<()>, Vec<u8>)>,
    /// Buffers to reuse.
    free: Vec<Vec<u8>>,
    next_seq: u64,
    in_flight: usize,
    held: usize,
    /// A failure was returned: what was queued behind it is dropped.
    failed: bool,
}

impl std::fmt::Debug for Ordered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordered")
            .field("threads", &self.threads)
            .field("queued", &self.queue.len())
            .field("held", &self.held)
            .finish()
    }
}

impl<'s> Ordered<'s> {
    /// In front of `sink`, with [`default_threads`] threads.
    pub fn new(sink: &'s mut dyn ImageSink) -> Self {
        Ordered::with_threads(sink, default_threads())
    }

    /// In front of `sink`, with `threads` inflating threads (1 or fewer:
    /// jobs run inline).
    pub fn with_threads(sink: &'s mut dyn ImageSink, threads: usize) -> Self {
        Ordered {
            sink,
            threads,
            pool: None,
            inline: Inflaters::default(),
            queue: VecDeque::new(),
            done: BTreeMap::new(),
            free: Vec::new(),
            next_seq: 0,
            in_flight: 0,
            held: 0,
            failed: false,
        }
    }

    /// Changes the number of threads; only before the first job.
    pub fn set_threads(&mut self, threads: usize) {
        debug_assert!(self.pool.is_none());
        self.threads = threads;
    }

    /// An empty buffer of at least `capacity` bytes (for a job's input),
    /// reused if one is free. Buffers are only ever allocated here, on the
    /// decoding thread: allocators keep per-thread caches, and memory freed
    /// on another thread than the one that allocated it lingers (with
    /// mimalloc on musl it added 20–30 MiB to the peak RSS of a compressed
    /// qcow2).
    pub fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        b.reserve(capacity);
        b
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.free.len() < MAX_FREE {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// Queues a job on `input` (best from [`Ordered::buffer`]) whose output,
    /// at most `out_len` bytes, goes to `offset`.
    pub fn inflate(&mut self, offset: u64, input: Vec<u8>, out_len: usize, job: Job) -> Result<()> {
        let held = input.len() + out_len;
        if self.threads <= 1 {
            let mut out = self.buffer(out_len);
            run_job(job, &mut self.inline, &input, &mut out)?;
            self.write_at(offset, &out)?;
            self.recycle(input);
            self.recycle(out);
            return Ok(());
        }
        self.collect()?;
        while self.in_flight > 0 && (self.in_flight >= MAX_JOBS || self.held + held > MAX_HELD) {
            self.wait_one()?;
        }
        if self.pool.is_none() {
            self.pool = Some(Pool::start(self.threads)?);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = Task { seq, job, input, out: self.buffer(out_len) };
        let sent = self.pool.as_ref().and_then(|p| p.jobs.as_ref()).is_some_and(|tx| tx.send(task).is_ok());
        if !sent {
            return Err(DeployError::Internal("the inflating threads are gone".into()));
        }
        self.in_flight += 1;
        self.held += held;
        self.queue.push_back(Op::Job { seq, offset, held });
        Ok(())
    }

    /// Waits for every job and applies everything queued, in order; the
    /// first failure (a job's or the sink's) stops it and is returned. A
    /// failure already returned by an earlier call is not returned again
    /// (nothing was applied after it).
    pub fn finish(&mut self) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        self.apply_ready()
    }

    /// Takes the results that are already in, without waiting.
    fn collect(&mut self) -> Result<()> {
        let mut any = false;
        while let Some(o) = self.pool.as_ref().and_then(|p| p.results.try_recv().ok()) {
            self.take(o);
            any = true;
        }
        if any {
            self.apply_ready()?;
        }
        Ok(())
    }

    fn take(&mut self, o: Outcome) {
        self.in_flight -= 1;
        self.done.insert(o.seq, (o.result, o.out));
        self.recycle(o.input);
    }

    /// Waits for one result, then applies what became ready.
    fn wait_one(&mut self) -> Result<()> {
        let pool = self.pool.as_ref().ok_or_else(|| DeployError::Internal("jobs in flight without threads".into()))?;
        let o = pool.results.recv().map_err(|_| DeployError::Internal("the inflating threads are gone".into()))?;
        self.take(o);
        self.apply_ready()
    }

    /// Applies queued operations from the front until an unfinished job;
    /// after a failure, drops the rest.
    fn apply_ready(&mut self) -> Result<()> {
        let r = self.apply_front();
        if r.is_err() {
            self.failed = true;
            self.queue.clear();
            self.done.clear();
            self.held = 0;
        }
        r
    }

    fn apply_front(&mut self) -> Result<()> {
        while let Some(op) = self.queue.front() {
            if let Op::Job { seq, .. } = op {
                if !self.done.contains_key(seq) {
                    break;
                }
            }
            match self.queue.pop_front() {
                Some(Op::Write { offset, data }) => {
                    self.held -= data.len();
                    self.sink.write_at(offset, &data)?;
                    self.recycle(data);
                }
                Some(Op::Zero { offset, len }) => self.sink.zero_at(offset, len)?,
                Some(Op::Job { seq, offset, held }) => {
                    self.held -= held;
                    if let Some((r, out)) = self.done.remove(&seq) {
                        r?;
                        self.sink.write_at(offset, &out)?;
                        self.recycle(out);
                    }
                }
                None => break,
            }
        }
        Ok(())
    }
}

impl ImageSink for Ordered<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.queue.is_empty() {
            return self.sink.write_at(offset, data);
        }
        while self.in_flight > 0 && self.held + data.len() > MAX_HELD {
            self.wait_one()?;
        }
        if self.queue.is_empty() {
            return self.sink.write_at(offset, data);
        }
        self.held += data.len();
        let mut copy = self.buffer(data.len());
        copy.extend_from_slice(data);
        self.queue.push_back(Op::Write { offset, data: copy });
        Ok(())
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.queue.is_empty() {
            return self.sink.zero_at(offset, len);
        }
        self.queue.push_back(Op::Zero { offset, len });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every operation the inner sink sees.
    #[derive(Default)]
    struct Log(Vec<(u64, Vec<u8>)>);

    impl ImageSink for Log {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
            self.0.push((offset, data.to_vec()));
            Ok(())
        }
        fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
            self.0.push((offset, vec![0; len as usize]));
            Ok(())
        }
    }

    /// A job that sleeps a little, longer for earlier jobs, so that the
    /// threads finish them out of order.
    fn slow_job(i: u64, fail: bool) -> Job {
        Box::new(move |_, input, out| {
            std::thread::sleep(std::time::Duration::from_millis(8 - i % 8));
            if fail {
                return Err(DeployError::corrupt_qcow2(format!("job {i}")));
            }
            out.extend_from_slice(input);
            out.push(i as u8);
            Ok(())
        })
    }

    fn input(i: u64) -> Vec<u8> {
        vec![i as u8; 2]
    }

    #[test]
    fn applies_in_the_given_order_whatever_the_threads() {
        for threads in [1, 2, 4] {
            let mut log = Log::default();
            let mut o = Ordered::with_threads(&mut log, threads);
            for i in 0..100u64 {
                match i % 3 {
                    0 => o.inflate(i, input(i), 4, slow_job(i, false)).unwrap(),
                    1 => o.write_at(i, &[i as u8; 2]).unwrap(),
                    _ => o.zero_at(i, 1).unwrap(),
                }
            }
            o.finish().unwrap();
            drop(o);
            let offsets: Vec<u64> = log.0.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "{threads} threads");
            for (off, data) in &log.0 {
                let want = match off % 3 {
                    0 => vec![*off as u8; 3],
                    1 => vec![*off as u8; 2],
                    _ => vec![0],
                };
                assert_eq!(data, &want, "{threads} threads, offset {off}");
            }
        }
    }

    #[test]
    fn a_failed_job_stops_everything_after_it() {
        for threads in [1, 3] {
            let mut log = Log::default();
            let mut o = Ordered::with_threads(&mut log, threads);
            let mut first_err = None;
            for i in 0..40u64 {
                let r = if i % 2 == 0 { o.inflate(i, input(i), 4, slow_job(i, i == 20)) } else { o.write_at(i, &[1]) };
                if let Err(e) = r {
                    first_err = Some(e);
                    break;
                }
            }
            let e = match first_err {
                Some(e) => e,
                None => o.finish().unwrap_err(),
            };
            drop(o);
            assert_eq!(e.to_string(), "corrupt qcow2 image: job 20");
            assert_eq!(log.0.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut log = Log::default();
        let mut o = Ordered::with_threads(&mut log, 2);
        let mut most = (0, 0);
        for i in 0..200u64 {
            o.inflate(i, input(i), 1 << 20, slow_job(i, false)).unwrap();
            o.write_at(1000 + i, &vec![0u8; 300 << 10]).unwrap();
            most = (most.0.max(o.held), most.1.max(o.in_flight));
        }
        o.finish().unwrap();
        assert!(most.0 <= MAX_HELD, "{most:?}");
        assert!(most.1 <= MAX_JOBS, "{most:?}");
        assert!(most.1 >= 2, "jobs never overlapped: {most:?}");
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_hang() {
        let mut log = Log::default();
        let mut o = Ordered::with_threads(&mut log, 2);
        o.inflate(0, input(0), 1, Box::new(|_, _, _| panic!("boom"))).unwrap();
        o.inflate(1, input(1), 1, slow_job(1, false)).unwrap();
        let e = o.finish().unwrap_err();
        assert!(e.to_string().contains("an inflating thread panicked"), "{e}");
    }
}
