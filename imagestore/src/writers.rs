//! Parallel file writers for one layer's unpack (#18: small-file unpack).
//!
//! The tar stream is sequential (decompress, diff_id hash, headers), but what follows for each
//! regular file is not: create it in the layer's view, write and hash its bytes, set its
//! metadata, link it into `objects/`. Those steps are mostly kernel time in the file system
//! (inode allocation, directory insertion, journal), and ext4 lets creators in different
//! threads proceed in parallel (inodes are allocated per block group, each directory has its
//! own lock). So the reading thread hands each file to one of a few writer threads, round
//! robin, as `Open` + `Data`… + `Close` messages on that writer's bounded channel (the bound
//! is the memory in flight), and goes on reading; the per-file content hash (the object key) moves
//! off the reading thread too.
//!
//! Ordering: a writer finishes its files in the order it got them; across writers nothing is
//! ordered, so the reader waits for every writer ([`Writers::barrier`]) before it touches a
//! path a pending file might occupy (a name given twice, a hard link to a file of this layer, a
//! parent directory named like a pending file). Tars in the wild list each path once, so the
//! common layer never waits until its end.
//!
//! A writer's result (the object key, or the error) comes back on one shared channel; the
//! reader applies results as they arrive and stops at the first error. Dropping [`Writers`]
//! closes the channels and joins the threads, so nothing writes into the layer's work
//! directory once the unpack returns (its `TmpDir` is removed after).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, Meta};
use crate::layer::LayerInput;
use crate::layout::{ContentHasher, Kind, object_key, object_rel};
use crate::unpack::ObjectsLock;

/// Bytes per `Data` message: a file's content is read from the tar in pieces of this size.
/// (256 KiB pieces with a queue of 16 were tried for #18, to wake writers less often: no
/// measurable change in the cold pull's CPU, and fewer small files in flight; tried again
/// once the reader filled each chunk whole: within the noise.)
pub(crate) const CHUNK: usize = 64 << 10;
/// Messages queued per writer: with [`CHUNK`], at most 4 MiB in flight per writer.
const QUEUE: usize = 64;
/// Spare chunk buffers kept for reuse (the reader allocates one per chunk otherwise).
const POOL: usize = 256;
/// Dirty bytes of one file after which its writeback is started (see [`start_writeback`]).
const WRITEBACK_AFTER: u64 = 4 << 20;

/// Writer threads per unpack: as many as the machine has cores, at least 2 (the reader is
/// busy with decompression and hashing), at most 4 (more only contend for the journal).
fn writer_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// A regular file for a writer: where it goes and what it is.
pub(crate) struct FileJob {
    pub dir: Arc<OwnedFd>,
    pub name: String,
    pub path: String,
    pub meta: Meta,
    pub size: u64,
}

enum Msg {
    Open(FileJob),
    Data(Vec<u8>),
    Close,
}

/// What a writer reports per file: its path and the kind the manifest records.
type Done = (String, Result<Kind>);

/// What every writer shares: the layer (for messages), the store's objects directory, the
/// layer's work directory (temp names), the objects lock.
#[derive(Clone)]
pub(crate) struct Context {
    pub layer: LayerInput,
    pub objects: Arc<OwnedFd>,
    pub work: Arc<OwnedFd>,
    pub objects_lock: ObjectsLock,
    pub owner_known: bool,
}

/// The writer threads of one unpack, started with the first file.
pub(crate) struct Writers {
    ctx: Context,
    senders: Vec<SyncSender<Msg>>,
    threads: Vec<JoinHandle<()>>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// The writer of the file being sent, and the next writer to get one.
    current: usize,
    next: usize,
    /// Paths sent and not reported yet.
    pending: HashSet<String>,
    /// Reported results not applied yet by the reader.
    ready: Vec<(String, Kind)>,
}

impl Writers {
    pub(crate) fn new(ctx: Context) -> Self {
        let (done_tx, done) = std::sync::mpsc::channel();
        Writers {
            ctx,
            senders: Vec::new(),
            threads: Vec::new(),
            done_tx,
            done,
            pool: Arc::default(),
            current: 0,
            next: 0,
            pending: HashSet::new(),
            ready: Vec::new(),
        }
    }

    fn start(&mut self) -> Result<()> {
        for i in 0..writer_count() {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let (ctx, done, pool) = (self.ctx.clone(), self.done_tx.clone(), self.pool.clone());
            let handle = std::thread::Builder::new()
                .name(format!("unpack-writer-{i}"))
                .spawn(move || Worker::new(i, ctx, pool).run(rx, done))
                .map_err(|e| Error::io("start unpack writer", "layer", e))?;
            self.senders.push(tx);
            self.threads.push(handle);
        }
        Ok(())
    }

    fn stopped(&self) -> Error {
        Error::Interrupted {
            what: format!("unpack of layer {}", self.ctx.layer.digest),
            detail: "a file writer thread stopped".into(),
        }
    }

    fn send(&mut self, msg: Msg) -> Result<()> {
        let tx = self
            .senders
            .get(self.current)
            .ok_or_else(|| self.stopped())?;
        tx.send(msg).map_err(|_| self.stopped())
    }

    /// Start sending file `job` to the next writer. Fails with the first error a writer
    /// reported so far.
    pub(crate) fn open(&mut self, job: FileJob) -> Result<()> {
        self.collect(false)?;
        if self.senders.is_empty() {
            self.start()?;
        }
        self.current = self.next;
        self.next = (self.next + 1) % self.senders.len();
        self.pending.insert(job.path.clone());
        self.send(Msg::Open(job))
    }

    /// A buffer of `len` bytes (at most [`CHUNK`]) for the next chunk, reused when a writer
    /// gave one back.
    pub(crate) fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = match self.pool.lock() {
            Ok(mut p) => p.pop(),
            Err(_) => None,
        };
        let len = len.min(CHUNK);
        let mut buf = spare.unwrap_or_else(|| Vec::with_capacity(CHUNK));
        // Not cleared first: only bytes the buffer never held are zeroed (the reader
        // overwrites what it uses; zeroing every chunk was 2 % of a cold pull's CPU).
        buf.resize(len, 0);
        buf
    }

    /// The next piece of the open file's content.
    pub(crate) fn data(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.send(Msg::Data(chunk))
    }

    /// The open file is complete.
    pub(crate) fn close(&mut self) -> Result<()> {
        self.send(Msg::Close)
    }

    /// Whether `path` was sent and not reported yet.
    pub(crate) fn is_pending(&self, path: &str) -> bool {
        self.pending.contains(path)
    }

    /// Whether any file is in flight.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Move reported results to `ready`; with `wait`, until nothing is pending.
    fn collect(&mut self, wait: bool) -> Result<()> {
        loop {
            let (path, result) = if wait && !self.pending.is_empty() {
                self.done.recv().map_err(|_| self.stopped())?
            } else {
                match self.done.try_recv() {
                    Ok(d) => d,
                    Err(TryRecvError::Empty) => return Ok(()),
                    Err(TryRecvError::Disconnected) => return Err(self.stopped()),
                }
            };
            self.pending.remove(&path);
            self.ready.push((path, result?));
        }
    }

    /// Wait for every file sent so far; returns the results not taken yet.
    pub(crate) fn barrier(&mut self) -> Result<Vec<(String, Kind)>> {
        self.collect(true)?;
        Ok(std::mem::take(&mut self.ready))
    }

    /// Results reported so far, without waiting (the first error a writer reported).
    pub(crate) fn take_ready(&mut self) -> Result<Vec<(String, Kind)>> {
        self.collect(false)?;
        Ok(std::mem::take(&mut self.ready))
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        // Closed channels end the writers' loops; joined so nothing writes after the unpack.
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The file a writer is writing.
struct Open {
    job: FileJob,
    file: Option<File>,
    hasher: ContentHasher,
    written: u64,
    /// Bytes written since the last [`start_writeback`].
    dirty: u64,
    failed: Option<Error>,
}

/// Start writing `file`'s dirty pages to disk without waiting for it. A pull commits only
/// after one `syncfs` of the store (see `metadata`); large files whose writeback already ran
/// while the rest of the image arrived leave that flush little to do, so the disk works in
/// parallel with the network instead of after it. Advisory: an error changes nothing (the
/// `syncfs` still reports it).
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // the duration of the call (borrowed from `file`).
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

struct Worker {
    id: usize,
    ctx: Context,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    tmp_counter: u64,
}

impl Worker {
    fn new(id: usize, ctx: Context, pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>) -> Self {
        Worker {
            id,
            ctx,
            pool,
            tmp_counter: 0,
        }
    }

    fn run(mut self, rx: Receiver<Msg>, done: Sender<Done>) {
        let mut cur: Option<Open> = None;
        for msg in rx {
            match msg {
                Msg::Open(job) => cur = Some(self.open(job)),
                Msg::Data(chunk) => {
                    if let Some(o) = cur.as_mut() {
                        self.write(o, &chunk);
                    }
                    self.give_back(chunk);
                }
                Msg::Close => {
                    if let Some(o) = cur.take() {
                        let path = o.job.path.clone();
                        if done.send((path, self.finish(o))).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        // The reader stopped mid-file (an error): the file stays in the work directory,
        // which the unpack removes.
    }

    fn give_back(&self, chunk: Vec<u8>) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < POOL
        {
            p.push(chunk);
        }
    }

    fn open(&self, job: FileJob) -> Open {
        let file = rustix::fs::openat(
            &*job.dir,
            job.name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(job.meta.mode & 0o777),
        );
        let (file, failed) = match file {
            Ok(fd) => (Some(File::from(fd)), None),
            Err(e) => (None, Some(Error::io("create file", &job.path, e.into()))),
        };
        Open {
            job,
            file,
            hasher: ContentHasher::new(),
            written: 0,
            dirty: 0,
            failed,
        }
    }

    fn write(&self, o: &mut Open, chunk: &[u8]) {
        let Some(file) = o.file.as_mut() else { return };
        o.hasher.update(chunk);
        o.written += chunk.len() as u64;
        if let Err(e) = file.write_all(chunk) {
            o.failed = Some(Error::io("write file", &o.job.path, e));
            o.file = None;
            return;
        }
        o.dirty += chunk.len() as u64;
        if o.dirty >= WRITEBACK_AFTER {
            start_writeback(file);
            o.dirty = 0;
        }
    }

    /// Metadata, then the object: as `Unpack::file` did it inline (see there for why each
    /// step is as it is).
    fn finish(&mut self, o: Open) -> Result<Kind> {
        if let Some(e) = o.failed {
            return Err(e);
        }
        let Open {
            job,
            file,
            hasher,
            written,
            dirty,
            ..
        } = o;
        let file = file
            .ok_or_else(|| Error::io("write file", &job.path, std::io::ErrorKind::Other.into()))?;
        if written != job.size {
            return Err(crate::entries::refused(
                &self.ctx.layer,
                &job.path,
                format!("declared {} bytes, the archive holds {written}", job.size),
            ));
        }
        fsutil::apply_meta_new_fd(&file, &job.meta, self.ctx.owner_known)
            .map_err(|e| Error::io("set metadata", &job.path, e))?;
        // Small files stay for the one flush at the commit: started one by one, their
        // writeback would cost a request each.
        if written >= WRITEBACK_AFTER / 4 && dirty > 0 {
            start_writeback(&file);
        }
        drop(file);
        if job.size == 0 {
            return Ok(Kind::File {
                object: None,
                size: 0,
                private: true,
            });
        }
        failpoint::hit("unpack.object-written");
        let key = object_key(hasher.finalize().as_bytes(), &job.meta);
        let private = self.link_object(&job, &object_rel(&key))?;
        Ok(Kind::File {
            object: Some(key),
            size: job.size,
            private,
        })
    }

    /// Publish the view's file as object `rel`, or replace it by a link to the object that
    /// exists; `true` when the view keeps its own copy (`EMLINK`).
    fn link_object(&mut self, job: &FileJob, rel: &str) -> Result<bool> {
        let (dir, name, path) = (&*job.dir, job.name.as_str(), job.path.as_str());
        let objects = &*self.ctx.objects;
        let _linking = self
            .ctx
            .objects_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match rustix::fs::linkat(dir, name, objects, rel, AtFlags::empty()) {
                Ok(()) => failpoint::hit("unpack.object-linked"),
                Err(rustix::io::Errno::EXIST) => {
                    self.tmp_counter += 1;
                    let tmp_name = format!("w{}-{}", self.id, self.tmp_counter);
                    let work = &*self.ctx.work;
                    match rustix::fs::linkat(
                        objects,
                        rel,
                        work,
                        tmp_name.as_str(),
                        AtFlags::empty(),
                    ) {
                        Ok(()) => rustix::fs::renameat(work, tmp_name.as_str(), dir, name)
                            .map_err(|e| Error::io("place file", path, e.into()))?,
                        Err(rustix::io::Errno::NOENT) if attempts < 5 => continue,
                        Err(rustix::io::Errno::MLINK) => return Ok(true),
                        Err(e) => return Err(Error::io("link object", path, e.into())),
                    }
                }
                Err(e) => return Err(Error::io("create object", path, e.into())),
            }
            return Ok(false);
        }
    }
}
