//! Data parallelism: one rank per device, on one machine or several (nodes). Every rank holds
//! a replica of the models and trains on its part of each global batch; once per step the
//! ranks average their gradients, loss and batch centre in one all-reduce (Burn's
//! collective), then apply the same update, so the replicas and their EMA teachers stay
//! equal with no further traffic: the official DDP step, with its `all_reduce(batch_center)`.
//!
//! Ranks are numbered node by node: node `n`'s `d`-th device is rank `n * devices + d`, and
//! every node gives the same number of devices. On one node the ranks meet through Burn's
//! collective ([`Peer`]). Across nodes every rank holds a TCP connection to a hub in node 0's
//! process, at `run.coordinator`, which sums the ranks' values in rank order and sends each
//! the mean ([`HubLink`]): Burn 0.21's global collective hangs at a process's second
//! all-reduce (its `SyncService::sync` clears a copy of the list of synced peers, never the
//! list, so the next sync never sees its peers complete).
//!
//! No wait is unbounded: a rank waits at most `run.collective_timeout` seconds for the others
//! (a local all-reduce runs on the rank's own collective thread for that), a rank of the
//! process that fails stops its siblings at once, and a node whose connection closes is named
//! to every other rank by the hub.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::config::RunConfig;

#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error("rank {rank} ({device}): cannot join the other ranks: {why}")]
    Join {
        rank: usize,
        device: String,
        why: String,
    },
    #[error("rank {rank} ({device}): the all-reduce of {what} failed: {why}")]
    AllReduce {
        rank: usize,
        device: String,
        what: &'static str,
        why: String,
    },
    #[error(
        "rank {rank} ({device}): no answer from the other ranks at the all-reduce of {what} \
         within {secs} s (run.collective_timeout): a device or node stopped or hangs; see the \
         other nodes' logs. The last checkpoint is valid: resume from it once all nodes run"
    )]
    Timeout {
        rank: usize,
        device: String,
        what: &'static str,
        secs: u64,
    },
    #[error("rank {rank} ({device}) stops because {failed}")]
    PeerFailed {
        rank: usize,
        device: String,
        failed: String,
    },
    #[error("rank {rank}: the coordinator {coordinator}: {why}")]
    Hub {
        rank: usize,
        coordinator: String,
        why: String,
    },
}

/// How the ranks of a step meet. On one device every reduction is the identity.
pub trait Collective<B: Backend> {
    /// This rank, in 0..world.
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The element-wise mean over all ranks of `t` [n] (each rank gets the same result);
    /// `what` names the values in errors.
    fn mean(&mut self, t: Tensor<B, 1>, what: &'static str) -> Result<Tensor<B, 1>, ParallelError>;
}

/// The collective a step's batch norms synchronize through (SyncBatchNorm), registered
/// for the forward and backward passes of one step on this thread: a batch norm deep in a
/// network cannot be handed the step's collective, and the backward pass runs inside Burn's
/// autodiff, on the thread that called it. The means are taken in the same order on every
/// rank, since every rank runs the same graph.
pub mod batch_sync {
    use std::any::Any;
    use std::cell::RefCell;

    use burn::tensor::Tensor;
    use burn::tensor::backend::Backend;

    use super::{Collective, ParallelError};

    struct Registered<B: Backend> {
        /// valid while [`with`] runs: it clears the registration before it returns
        sync: *mut (dyn Collective<B> + 'static),
        /// the first failure, which [`with`] returns
        error: Option<ParallelError>,
    }

    thread_local! {
        static CURRENT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Clears the registration however `f` ends (a panic included).
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }

    /// Runs `f` with `sync` as this thread's batch-norm collective; a failed mean inside it
    /// (a rank gone) is returned after `f`, whose result is then not to be used.
    pub fn with<B: Backend, R>(
        sync: &mut dyn Collective<B>,
        f: impl FnOnce() -> R,
    ) -> Result<R, ParallelError> {
        // SAFETY: the pointer lives in the registration only while `f` runs (`Clear` removes
        // it before this function returns, also on a panic), and `sync` is borrowed
        // mutably for all that time, so nothing else reaches it.
        let sync: *mut (dyn Collective<B> + 'static) = unsafe { std::mem::transmute(sync) };
        CURRENT.with(|c| {
            let registered: Box<dyn Any> = Box::new(Registered::<B> { sync, error: None });
            *c.borrow_mut() = Some(registered);
        });
        let clear = Clear;
        let out = f();
        let error = CURRENT.with(|c| {
            let mut current = c.borrow_mut();
            let registered = current
                .as_mut()
                .and_then(|r| r.downcast_mut::<Registered<B>>());
            registered.and_then(|r| r.error.take())
        });
        drop(clear);
        error.map_or(Ok(out), Err)
    }

    /// The ranks the registered collective of backend `B` joins (1 without one).
    pub fn world<B: Backend>() -> usize {
        // SAFETY: see `with`
        visit::<B, _>(|r| r.map_or(1, |r| unsafe { &*r.sync }.world()))
    }

    /// The mean of `t` over the ranks of the registered collective (`t` itself without
    /// one). After a failure the local value is returned, and [`with`] reports the failure.
    pub fn mean<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 1> {
        visit::<B, _>(|r| match r {
            None => t,
            Some(r) if r.error.is_some() => t,
            Some(r) => {
                // SAFETY: see `with`; the registration is only reached from its thread
                let sync = unsafe { &mut *r.sync };
                match sync.mean(t.clone(), "the batch-norm statistics") {
                    Ok(mean) => mean,
                    Err(e) => {
                        r.error = Some(e);
                        t
                    }
                }
            }
        })
    }

    fn visit<B: Backend, T>(f: impl FnOnce(Option<&mut Registered<B>>) -> T) -> T {
        CURRENT.with(|c| {
            let mut current = c.borrow_mut();
            f(current
                .as_mut()
                .and_then(|r| r.downcast_mut::<Registered<B>>()))
        })
    }
}

/// A run on one device: its values are already the mean over the whole batch.
pub struct OneDevice;

impl<B: Backend> Collective<B> for OneDevice {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn mean(&mut self, t: Tensor<B, 1>, _: &'static str) -> Result<Tensor<B, 1>, ParallelError> {
        Ok(t)
    }
}

/// The means over all ranks of `tensors` (each [n_i]), in one all-reduce: they are joined
/// into one tensor and split again (on one device, returned as they are).
pub fn mean_all<B: Backend>(
    sync: &mut dyn Collective<B>,
    tensors: Vec<Tensor<B, 1>>,
    what: &'static str,
) -> Result<Vec<Tensor<B, 1>>, ParallelError> {
    if sync.world() == 1 {
        return Ok(tensors);
    }
    let lens: Vec<usize> = tensors.iter().map(|t| t.dims()[0]).collect();
    let joined = sync.mean(Tensor::cat(tensors, 0), what)?;
    let mut at = 0;
    Ok(lens
        .into_iter()
        .map(|n| {
            at += n;
            joined.clone().narrow(0, at - n, n)
        })
        .collect())
}

/// The ranks of a run and how they meet.
#[derive(Clone, Debug)]
pub struct World {
    pub nodes: usize,
    pub node_rank: usize,
    /// devices per node
    pub devices: usize,
    /// node 0's HOST:PORT, with several nodes
    pub coordinator: String,
    timeout: Duration,
}

impl World {
    /// The world of a run with `cfg`'s node settings and `devices` devices on each node.
    pub fn new(cfg: &RunConfig, devices: usize) -> Self {
        Self {
            nodes: cfg.nodes,
            node_rank: cfg.node_rank,
            devices,
            coordinator: cfg.coordinator.clone(),
            timeout: Duration::from_secs(cfg.collective_timeout),
        }
    }

    /// Ranks in all.
    pub fn size(&self) -> usize {
        self.nodes * self.devices
    }

    /// How long a rank waits for the others.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The rank of this node's `local`-th device.
    pub fn rank(&self, local: usize) -> usize {
        self.node_rank * self.devices + local
    }
}

/// The collective's state is per process: one run at a time uses it, from a clean start.
pub fn session<B: Backend>() -> std::sync::MutexGuard<'static, ()> {
    static SESSION: Mutex<()> = Mutex::new(());
    let guard = SESSION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    burn_collective::reset_collective::<B>();
    guard
}

/// Where the ranks of one process learn that one of them failed.
#[derive(Default)]
pub struct Abort(Mutex<Option<String>>);

impl Abort {
    /// Records the first failure; the others follow from it.
    pub fn fail(&self, why: String) {
        self.0.lock().unwrap().get_or_insert(why);
    }

    pub fn failed(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The collective thread's answer: to the registration (no tensor), or an all-reduce.
type Reply<B> = Result<Option<<B as BackendTypes>::FloatTensorPrimitive>, String>;

/// One rank's membership of the collective.
pub struct Peer<B: Backend> {
    rank: usize,
    world: usize,
    device: String,
    requests: Option<mpsc::Sender<B::FloatTensorPrimitive>>,
    replies: mpsc::Receiver<Reply<B>>,
    abort: Arc<Abort>,
    timeout: Duration,
}

impl<B: Backend> Peer<B> {
    /// Registers this node's `local`-th device (named `device` in messages) and waits until
    /// every rank has.
    pub fn join(
        world: &World,
        local: usize,
        device: B::Device,
        name: String,
        abort: Arc<Abort>,
    ) -> Result<Self, ParallelError> {
        let rank = world.rank(local);
        let (requests, jobs) = mpsc::channel::<B::FloatTensorPrimitive>();
        let (reply, replies) = mpsc::channel::<Reply<B>>();
        let config = CollectiveConfig::default().with_num_devices(world.devices);
        let id = PeerId::from(rank);
        let spawned = std::thread::Builder::new()
            .name(format!("collective-rank-{rank}"))
            .spawn(move || {
                let joined = burn_collective::register::<B>(id, device, config);
                let ok = joined.is_ok();
                let sent = reply.send(joined.map(|()| None).map_err(|e| format!("{e:?}")));
                if sent.is_err() || !ok {
                    return;
                }
                for tensor in jobs {
                    let reduced =
                        burn_collective::all_reduce::<B>(id, tensor, ReduceOperation::Mean)
                            .map(Some)
                            .map_err(|e| format!("{e:?}"));
                    if reply.send(reduced).is_err() {
                        return;
                    }
                }
                let _ = burn_collective::finish_collective::<B>(id);
            });
        let mut peer = Self {
            rank,
            world: world.size(),
            device: name,
            requests: Some(requests),
            replies,
            abort,
            timeout: world.timeout,
        };
        if let Err(e) = spawned {
            return Err(peer.join_error(e.to_string()));
        }
        match peer.wait("the registration") {
            Ok(_) => Ok(peer),
            Err(ParallelError::AllReduce { why, .. }) => Err(peer.join_error(why)),
            Err(e) => Err(e),
        }
    }

    fn join_error(&self, why: String) -> ParallelError {
        ParallelError::Join {
            rank: self.rank,
            device: self.device.clone(),
            why,
        }
    }

    /// The collective thread's next reply, within the timeout, unless another rank of this
    /// process fails first.
    fn wait(
        &mut self,
        what: &'static str,
    ) -> Result<Option<B::FloatTensorPrimitive>, ParallelError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(failed) = self.abort.failed() {
                return Err(ParallelError::PeerFailed {
                    rank: self.rank,
                    device: self.device.clone(),
                    failed,
                });
            }
            match self.replies.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(tensor)) => return Ok(tensor),
                Ok(Err(why)) => {
                    return Err(ParallelError::AllReduce {
                        rank: self.rank,
                        device: self.device.clone(),
                        what,
                        why,
                    });
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ParallelError::Timeout {
                        rank: self.rank,
                        device: self.device.clone(),
                        what,
                        secs: self.timeout.as_secs(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ParallelError::AllReduce {
                        rank: self.rank,
                        device: self.device.clone(),
                        what,
                        why: "its collective thread ended".into(),
                    });
                }
            }
        }
    }
}

impl<B: Backend> Collective<B> for Peer<B> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn mean(&mut self, t: Tensor<B, 1>, what: &'static str) -> Result<Tensor<B, 1>, ParallelError> {
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(t.into_primitive().tensor()).is_ok());
        if !sent {
            return Err(ParallelError::AllReduce {
                rank: self.rank,
                device: self.device.clone(),
                what,
                why: "its collective thread ended".into(),
            });
        }
        let reduced = self
            .wait(what)?
            .expect("an all-reduce answers with a tensor");
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }
}

impl<B: Backend> Drop for Peer<B> {
    fn drop(&mut self) {
        // ends the collective thread's loop, which then unregisters
        self.requests.take();
    }
}

/// A hub frame's length field that announces an error message instead of values.
const ERROR_FRAME: u64 = u64::MAX;

/// Node 0's hub: accepts one connection per rank of the run on `listener`, then, per
/// all-reduce, reads every rank's values in rank order, and sends each rank their mean. A
/// rank that closes its connection, sends another size, or stays silent past `timeout` is
/// named to all the others, and the hub stops. Runs until the ranks are done.
pub fn start_hub(listener: TcpListener, world: usize, timeout: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("collective-hub".into())
        .spawn(move || {
            let mut ranks: Vec<Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>> =
                (0..world).map(|_| None).collect();
            let mut joined = 0;
            while joined < world {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let Ok(hello) = read_u64(&mut &stream) else {
                    continue;
                };
                let (rank, their_world) = ((hello >> 32) as usize, (hello & 0xFFFF_FFFF) as usize);
                let mut writer = BufWriter::new(stream.try_clone().expect("a socket clones"));
                if their_world != world || rank >= world || ranks[rank].is_some() {
                    let why = format!(
                        "rank {rank} of {their_world} cannot join a run of {world} ranks (each \
                         node must give the same number of devices, and its own --node-rank)"
                    );
                    let _ = send_error(&mut writer, &why);
                    continue;
                }
                let _ = stream.set_read_timeout(Some(timeout));
                ranks[rank] = Some((BufReader::new(stream), writer));
                joined += 1;
            }
            let mut ranks: Vec<_> = ranks.into_iter().flatten().collect();
            loop {
                let mut sum: Vec<f32> = Vec::new();
                let mut failure = None;
                for (rank, (reader, _)) in ranks.iter_mut().enumerate() {
                    match read_values(reader) {
                        Ok(values) if rank == 0 => sum = values,
                        Ok(values) if values.len() == sum.len() => {
                            sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
                        }
                        Ok(values) => {
                            failure = Some(format!(
                                "rank {rank} sent {} values, rank 0 {}",
                                values.len(),
                                sum.len()
                            ));
                        }
                        // every rank gone at a step's start: the run ended
                        Err(e) if rank == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            return;
                        }
                        Err(e) => failure = Some(describe_loss(rank, &e, timeout)),
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                for (_, writer) in &mut ranks {
                    let _ = match &failure {
                        Some(why) => send_error(writer, why),
                        None => send_values(writer, sum.iter().map(|s| s / world as f32)),
                    };
                }
                if failure.is_some() {
                    return;
                }
            }
        })?;
    Ok(())
}

fn describe_loss(rank: usize, e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
            "rank {rank} sent nothing for {} s (run.collective_timeout): its node hangs",
            timeout.as_secs()
        ),
        std::io::ErrorKind::UnexpectedEof => {
            format!("rank {rank} left the run (its connection closed): its node stopped")
        }
        _ => format!("rank {rank} left the run ({e}): its node stopped"),
    }
}

fn read_u64(reader: &mut impl Read) -> std::io::Result<u64> {
    let mut bytes = [0; 8];
    reader.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// A frame of values, or the hub's error message as an `Other` error.
fn read_values(reader: &mut impl Read) -> std::io::Result<Vec<f32>> {
    let n = read_u64(reader)?;
    if n == ERROR_FRAME {
        let len = read_u64(reader)? as usize;
        let mut text = vec![0; len.min(1 << 16)];
        reader.read_exact(&mut text)?;
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&text).into_owned(),
        ));
    }
    let mut bytes = vec![0; n as usize * 4];
    reader.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect())
}

fn send_values(
    writer: &mut impl Write,
    values: impl ExactSizeIterator<Item = f32>,
) -> std::io::Result<()> {
    writer.write_all(&(values.len() as u64).to_le_bytes())?;
    for v in values {
        writer.write_all(&v.to_le_bytes())?;
    }
    writer.flush()
}

fn send_error(writer: &mut impl Write, why: &str) -> std::io::Result<()> {
    writer.write_all(&ERROR_FRAME.to_le_bytes())?;
    writer.write_all(&(why.len() as u64).to_le_bytes())?;
    writer.write_all(why.as_bytes())?;
    writer.flush()
}

/// A rank's connection to the hub of a run on several nodes.
pub struct HubLink<B: Backend> {
    rank: usize,
    world: usize,
    coordinator: String,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    device: B::Device,
    /// how long a reply may take
    patience: Duration,
}

impl<B: Backend> HubLink<B> {
    /// Connects this node's `local`-th device to the hub, retrying while node 0 starts, for
    /// at most the collective timeout.
    pub fn connect(world: &World, local: usize, device: B::Device) -> Result<Self, ParallelError> {
        let rank = world.rank(local);
        let fail = |why: String| ParallelError::Hub {
            rank,
            coordinator: world.coordinator.clone(),
            why,
        };
        let deadline = Instant::now() + world.timeout;
        let stream = loop {
            match TcpStream::connect(&world.coordinator) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(fail(format!(
                        "cannot connect within {} s (run.collective_timeout): {e}; is node 0 \
                         running, and its port open to this machine?",
                        world.timeout.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let io = |e: std::io::Error| fail(e.to_string());
        stream.set_nodelay(true).map_err(io)?;
        // the hub names a rank that stays silent after its own timeout: wait a little longer
        let patience = world.timeout + Duration::from_secs(10);
        stream.set_read_timeout(Some(patience)).map_err(io)?;
        let mut writer = BufWriter::new(stream.try_clone().map_err(io)?);
        let hello = ((rank as u64) << 32) | world.size() as u64;
        writer.write_all(&hello.to_le_bytes()).map_err(io)?;
        writer.flush().map_err(io)?;
        Ok(Self {
            rank,
            world: world.size(),
            coordinator: world.coordinator.clone(),
            reader: BufReader::new(stream),
            writer,
            device,
            patience,
        })
    }
}

impl<B: Backend> Collective<B> for HubLink<B> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn mean(&mut self, t: Tensor<B, 1>, what: &'static str) -> Result<Tensor<B, 1>, ParallelError> {
        let values = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 values");
        let fail = |why: String| ParallelError::Hub {
            rank: self.rank,
            coordinator: self.coordinator.clone(),
            why: format!("the all-reduce of {what}: {why}"),
        };
        send_values(&mut self.writer, values.into_iter()).map_err(|e| fail(e.to_string()))?;
        let mean = read_values(&mut self.reader).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                fail("the connection closed: node 0 stopped".into())
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => fail(format!(
                "no answer within {} s (run.collective_timeout): a node has not joined, or \
                 node 0 hangs",
                self.patience.as_secs()
            )),
            _ => fail(e.to_string()),
        })?;
        let n = mean.len();
        Ok(Tensor::from_data(TensorData::new(mean, [n]), &self.device))
    }
}
