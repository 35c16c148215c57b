//! Start-up, serving and shutdown of the daemon.
//!
//! Order matters: the root lock is taken before the socket is touched, so a second daemon on
//! the same root can never unlink a live daemon's socket; the socket is bound only after the
//! store and the runtime are recovered (`recovery.rs`), so a client that connects is served.

use std::fs::{self, File, Permissions};
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use rootstock_cni::CniManager;
use rootstock_imagestore::ImageStore;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::blocking::blocking;
use crate::config::Config;
use crate::image::ImageApi;
use crate::metrics::DaemonMetrics;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::runtime::RuntimeApi;

/// How long in-flight calls may run on after SIGTERM before the daemon exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    init_tracing(&config.log_level)?;
    crate::trim::start();
    create_private_dir(&config.root_dir)?;
    create_private_dir(&config.state_dir)?;
    let _lock = RootLock::acquire(&config.root_dir)?;
    // Installed first: a SIGTERM during the (possibly long) recovery below is then handled
    // once it is done, instead of killing the process halfway through a store sweep.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let store = {
        let (root, images) = (config.root_dir.clone(), config.images.clone());
        blocking(move || ImageStore::open(&root, &images))
            .await
            .context("opening the image store")?
    };
    let store = Arc::new(store);
    let cni = Arc::new(CniManager::new(config.cni.clone(), &config.root_dir));
    let recovered = crate::recovery::recover(&config, &store, &cni).await?;
    let rt = Arc::new(recovered.rt);
    // Picks up a network config written after start-up; ends with the manager.
    let _cni_watcher = cni.spawn_watcher();
    // The socket appears only once everything is recovered: a client that can connect is
    // served, never told about a half-loaded state.
    let listener = bind_socket(&config.socket)?;
    info!(
        socket = %config.socket.display(),
        root = %config.root_dir.display(),
        state = %config.state_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "rootstock serving CRI v1"
    );
    // The socket is bound: calls queue until the server below accepts them.
    crate::notify::notify("READY=1");
    let config = Arc::new(config);
    let streaming = crate::streaming::StreamingServer::start(&config.streaming, rt.clone())
        .await
        .with_context(|| {
            format!(
                "starting the streaming server on {}",
                config.streaming.listen_addr()
            )
        })?;
    let metrics = Arc::new(DaemonMetrics::new());
    let observer = metrics.clone();
    rt.observe_steps(move |step, took| observer.step_done(step, took));
    if let Some(addr) = config
        .metrics
        .socket_addr()
        .map_err(|e| anyhow::anyhow!("metrics.address: {e}"))?
    {
        let sources = crate::metrics::server::Sources {
            metrics: metrics.clone(),
            rt: rt.clone(),
            store: store.clone(),
        };
        let bound = crate::metrics::server::start(addr, sources)
            .await
            .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
        info!(address = %bound, "serving Prometheus metrics at /metrics");
    }
    let images = ImageServiceServer::new(ImageApi::new(store.clone(), rt.clone(), metrics.clone()));
    let events = rt.clone();
    let runtime = RuntimeServiceServer::new(RuntimeApi::new(
        config.clone(),
        cni,
        rt,
        store.clone(),
        streaming,
        recovered.pod_ips,
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", method = req.uri().path()))
        .layer(GrpcMetricsLayer(metrics))
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let served = tokio::select! {
        res = &mut server => Some(res),
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    let result = match served {
        Some(res) => res.context("serving CRI"),
        None => {
            info!("shutting down: no new calls, in-flight calls may finish");
            crate::notify::notify("STOPPING=1");
            let _ = stop_tx.send(());
            // GetContainerEvents streams never end by themselves: end them, or they hold
            // the shutdown for the whole grace period (kubelet resubscribes on restart).
            events.events().close();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(res) => res.context("serving CRI"),
                Err(_) => {
                    warn!(grace = ?SHUTDOWN_GRACE, "in-flight calls did not finish in time");
                    Ok(())
                }
            }
        }
    };
    // After the server: no pull is in flight any more. The marker it writes lets the next
    // start skip the unclean-start object sweep.
    if let Err(e) = store.close().await {
        warn!(error = %e, "could not close the image store cleanly");
    }
    if let Err(e) = fs::remove_file(&config.socket) {
        warn!(socket = %config.socket.display(), error = %e, "could not remove the socket");
    }
    info!("stopped");
    result
}

fn init_tracing(level: &str) -> anyhow::Result<()> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(level)
            .with_context(|| format!("log_level {level:?} is not a valid tracing filter"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

/// Store and state directories hold other pods' data: root only.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    rootstock_fsutil::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))
}

/// An exclusive `flock` on `<root_dir>/rootstock.lock`, held for the daemon's lifetime. The
/// kernel drops it when the process dies, so a SIGKILLed daemon never leaves a stale lock.
struct RootLock {
    _file: File,
}

impl RootLock {
    fn acquire(root_dir: &Path) -> anyhow::Result<Self> {
        let path = root_dir.join("rootstock.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another rootstock daemon holds the lock {}: stop it first, or give this one \
                 another root_dir",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Binds the CRI socket, replacing a stale file but never a socket something still answers on.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by another process (a daemon with another root_dir?)",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    set_mode(path, 0o660)?;
    Ok(listener)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", PathBuf::from(path).display()))
}
