//! Starting and stopping the gateway threads: one listener (SO_REUSEPORT) and one
//! network loop per thread, each thread optionally pinned, the backend chosen per
//! config with a logged fallback from io_uring to mio.
//!
//! Guarantees: `start_gateways` returns only when every thread has set up its loop
//! (or returns the first setup error after stopping the others); `shutdown` sets the
//! shared flag, wakes every loop through its eventfd and joins them, so it returns
//! only when every connection is closed and released.

use crate::config::{Backend, NetworkConfig, ThreadsConfig};
use crate::metrics::{NetMetrics, Registry};
use crate::net::connection::ConnLimits;
use crate::net::driver::{Shared, ThreadSettings};
use crate::net::handler::{FrameHandler, GatewayContext};
use crate::net::mio_backend::MioLoop;
use crate::net::outbox::{Lane, Outbox};
use crate::net::uring_backend::UringLoop;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Which cores the threads run on (None: unpinned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorePlan {
    pub gateways: Vec<Option<usize>>,
    pub engine: Option<usize>,
    /// The journal and snapshot threads.
    pub journal: Option<usize>,
}

/// Decides thread counts and pinning for `available_cores`. Automatic: the engine
/// on the last core, gateways round robin on the others (on 2 cores: gateway on core
/// 0, engine on core 1); with one core, nothing is pinned.
pub fn plan_cores(threads: &ThreadsConfig, available_cores: usize) -> CorePlan {
    let available_cores = available_cores.max(1);
    let gateway_threads = if threads.gateway_threads > 0 {
        threads.gateway_threads
    } else {
        (available_cores - 1).max(1)
    };
    if !threads.pin || available_cores < 2 {
        return CorePlan {
            gateways: vec![None; gateway_threads],
            engine: None,
            journal: None,
        };
    }
    let engine = Some(threads.engine_core.unwrap_or(available_cores - 1));
    let gateway_cores: Vec<usize> = if threads.gateway_cores.is_empty() {
        (0..available_cores)
            .filter(|c| Some(*c) != engine)
            .collect()
    } else {
        threads.gateway_cores.clone()
    };
    let gateways = (0..gateway_threads)
        .map(|i| gateway_cores.get(i % gateway_cores.len().max(1)).copied())
        .collect();
    let journal = threads.journal_core.or(engine);
    CorePlan {
        gateways,
        engine,
        journal,
    }
}

/// Pins the calling thread (the engine thread calls this with `CorePlan::engine`).
pub fn pin_current_thread(core: Option<usize>) -> bool {
    let Some(core) = core else { return false };
    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !pinned {
        tracing::warn!(core, "could not pin thread to core");
    }
    pinned
}

/// Which loop a gateway thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendInUse {
    Uring,
    Mio,
}

/// Sets the shutdown flag and wakes every gateway loop. Cloneable, Send.
#[derive(Clone)]
pub struct ShutdownTrigger {
    shared: Arc<Shared>,
    outbox: Outbox,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for lane in self.outbox.lanes() {
            lane.force_wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.shared.is_shutdown()
    }
}

/// Installs SIGINT/SIGTERM handlers that trigger the shutdown and report the signal
/// on the returned channel (the router's main decides what to do: seal the block,
/// flush the journal...). The watcher thread ends after the first signal.
pub fn install_signal_handlers(
    trigger: ShutdownTrigger,
) -> io::Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (sender, receiver) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("ys-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "signal received: shutting down");
                trigger.trigger();
                let _ = sender.try_send(signal);
            }
        })?;
    Ok(receiver)
}

/// The running gateway threads.
pub struct GatewayHandle {
    outbox: Outbox,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addr: SocketAddr,
    backends: Vec<BackendInUse>,
}

impl GatewayHandle {
    /// Sends to any connection (give a clone to the engine thread).
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn backends(&self) -> &[BackendInUse] {
        &self.backends
    }

    /// Connections open in the whole process.
    pub fn connections_open(&self) -> usize {
        self.shared.connections_open.load(Ordering::Acquire)
    }

    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            shared: self.shared.clone(),
            outbox: self.outbox.clone(),
        }
    }

    /// Stops every loop (closing their connections) and joins the threads.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.shutdown_trigger().trigger();
        self.join_all()
    }

    /// Waits for the threads to exit (after a trigger, e.g. from a signal).
    pub fn join(mut self) -> io::Result<()> {
        self.join_all()
    }

    fn join_all(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => result = Err(error),
                Err(_) => result = Err(io::Error::other("gateway thread panicked")),
            }
        }
        assert_eq!(self.connections_open(), 0, "every connection released");
        result
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown_trigger().trigger();
            let _ = self.join_all();
        }
    }
}

/// Starts the gateway threads. `make_handler` runs on each gateway thread and builds
/// that thread's handler.
pub fn start_gateways<H, F>(
    network: &NetworkConfig,
    threads: &ThreadsConfig,
    registry: &Registry,
    make_handler: F,
) -> io::Result<GatewayHandle>
where
    H: FrameHandler + 'static,
    F: Fn(GatewayContext) -> H + Send + Sync + 'static,
{
    network
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let cores = core_affinity::get_core_ids().map_or(1, |ids| ids.len());
    let plan = plan_cores(threads, cores);
    let count = plan.gateways.len();
    assert!((1..=256).contains(&count), "gateway_threads {count}");
    let listeners = crate::net::socket::bind_group(network.listen, count)?;
    let local_addr = listeners[0].local_addr()?;
    let lanes = (0..count)
        .map(|_| Lane::new(network.outbound_queue_depth))
        .collect::<io::Result<Vec<_>>>()?;
    let outbox = Outbox::new(lanes);
    let connections_max = connections_max_for_descriptors(network)?;
    let unproven_per_thread_max =
        (network.connections_unproven_max_resolved(connections_max) / count).max(1);
    let shared = Arc::new(Shared::with_unproven(
        connections_max,
        unproven_per_thread_max.min(connections_max),
        NetMetrics::new(registry),
    ));
    let make_handler = Arc::new(make_handler);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(count);
    let mut handle = GatewayHandle {
        outbox: outbox.clone(),
        shared: shared.clone(),
        threads: Vec::new(),
        local_addr,
        backends: Vec::new(),
    };
    for (index, (listener, core)) in listeners.into_iter().zip(plan.gateways).enumerate() {
        let settings =
            ThreadSettings::new(index as u8, ConnLimits::from_config(network), threads.spin)
                .with_accept_backoff(
                    network.accept_backoff_ms,
                    network.accept_error_log_interval_ms,
                );
        let context = GatewayContext {
            thread_index: index as u8,
            gateway_threads: count,
            outbox: outbox.clone(),
        };
        let (network, shared, make_handler, ready_tx) = (
            network.clone(),
            shared.clone(),
            make_handler.clone(),
            ready_tx.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("ys-gateway-{index}"))
            .spawn(move || {
                pin_current_thread(core);
                let handler = make_handler(context.clone());
                run_thread(
                    &network,
                    settings,
                    &shared,
                    &context.outbox,
                    handler,
                    listener,
                    ready_tx,
                )
            })?;
        handle.threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(backend)) => handle.backends.push(backend),
            Ok(Err(error)) => return Err(error), // Drop stops the others.
            Err(_) => return Err(io::Error::other("gateway thread died during setup")),
        }
    }
    tracing::info!(%local_addr, threads = count, backends = ?handle.backends, "gateways listening");
    Ok(handle)
}

/// §9: the connections this process can hold: `network.connections_max`, bounded
/// by the descriptors it may open (RLIMIT_NOFILE, its soft limit first raised to
/// the hard one) less `network.fds_reserved` for the journal, snapshots, metrics,
/// rings and listeners. A larger `connections_max` is lowered, with a log line naming
/// both numbers; a limit that leaves no room for connections is an error.
pub fn connections_max_for_descriptors(network: &NetworkConfig) -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let descriptors = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let room = descriptors.saturating_sub(network.fds_reserved);
    if room == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the process may open {descriptors} descriptors (RLIMIT_NOFILE) and                  network.fds_reserved keeps {} of them: no room for connections; raise the                  limit (ulimit -n, LimitNOFILE=) or lower network.fds_reserved",
                network.fds_reserved
            ),
        ));
    }
    if network.connections_max > room {
        tracing::warn!(
            connections_max = network.connections_max,
            connections_max_used = room,
            rlimit_nofile = descriptors,
            fds_reserved = network.fds_reserved,
            "network.connections_max {} is more than this process can open: lowered to {room}              (RLIMIT_NOFILE {descriptors} less network.fds_reserved {})",
            network.connections_max,
            network.fds_reserved
        );
        return Ok(room);
    }
    Ok(network.connections_max)
}

fn run_thread<H: FrameHandler>(
    network: &NetworkConfig,
    settings: ThreadSettings,
    shared: &Shared,
    outbox: &Outbox,
    handler: H,
    listener: std::net::TcpListener,
    ready: crossbeam_channel::Sender<io::Result<BackendInUse>>,
) -> io::Result<()> {
    let index = settings.thread_index;
    let mut handler = Some(handler);
    if network.backend == Backend::Uring {
        match UringLoop::setup(network, settings.clone(), shared, outbox, &listener) {
            Ok(ring) => {
                let _ = ready.send(Ok(BackendInUse::Uring));
                let handler = handler.take().expect("handler present");
                return ring.run(handler, listener);
            }
            Err(error) => {
                tracing::warn!(thread = index, %error, "io_uring setup failed: falling back to mio");
            }
        }
    }
    let handler = handler.take().expect("handler present");
    match MioLoop::new(settings, shared, outbox, handler, listener) {
        Ok(mio_loop) => {
            let _ = ready.send(Ok(BackendInUse::Mio));
            mio_loop.run()
        }
        Err(error) => {
            let _ = ready.send(Err(io::Error::new(error.kind(), error.to_string())));
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_plan_on_two_cores_puts_gateway_on_0_and_engine_on_1() {
        let plan = plan_cores(&ThreadsConfig::default(), 2);
        assert_eq!(plan.gateways, vec![Some(0)]);
        assert_eq!(plan.engine, Some(1));
        let one_core = plan_cores(&ThreadsConfig::default(), 1);
        assert_eq!((one_core.gateways, one_core.engine), (vec![None], None));
        let four = ThreadsConfig {
            gateway_threads: 3,
            ..ThreadsConfig::default()
        };
        let plan = plan_cores(&four, 4);
        assert_eq!(plan.gateways, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(plan.engine, Some(3));
        assert_eq!(plan.journal, Some(3), "the journal follows the engine");
        let journal_apart = ThreadsConfig {
            journal_core: Some(2),
            ..four
        };
        assert_eq!(plan_cores(&journal_apart, 4).journal, Some(2));
    }
}
