//! Images as the world builds them, over the socket: a layer made by `tar -C dir -cf - .`
//! (with its root entry), hostile layers that hit each limit while the daemon's memory stays
//! small, a registry that drips one byte per second while everything else goes on, and a
//! very deep tree that is removed and survives a restart with few file descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::*;
use nix::sys::signal::Signal;
use rootstock_test_e2e::daemon::{Daemon, run_rootstock};
use rootstock_test_e2e::fixtures::{
    self, Compression, ImageBuilder, Layer, LayerBuilder, RawEntry,
};
use rootstock_test_e2e::http::read_request_head;
use rootstock_test_e2e::process::run;
use rootstock_test_e2e::registry::Registry;
use tonic::transport::Channel;

type Images = ImageServiceClient<Channel>;

fn insecure(registry: &Registry) -> String {
    format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    )
}

async fn pull(images: &mut Images, image: &str) -> Result<String, tonic::Status> {
    rootstock_test_e2e::cri::try_pull(images, image).await
}

/// A busybox root file system in a directory, for `tar` to pack.
fn busybox_dir(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/busybox"), fixtures::busybox_bytes()).unwrap();
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for tool in ["sh", "stat", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool)).unwrap();
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_from_tar_of_dot_pulls_runs_and_keeps_the_root_mode() {
    let registry = Registry::start().await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("rootfs");
    busybox_dir(&root);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(&root, Some(1234), Some(2345)).unwrap();
    let tar = run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-cf", "-", "."]));
    assert!(
        tar[..100].starts_with(b"./\0"),
        "the tar begins with its root entry"
    );
    let image = ImageBuilder::new()
        .layer(Layer::from_tar(tar, Compression::Gzip))
        .env("PATH", "/bin")
        .cmd(&["sh"])
        .build();
    registry.push("world/tar-dot", "v1", &image).await;

    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    loopback_network(&daemon).await;
    let mut images = daemon.images().await;
    let id = pull(&mut images, &registry.image_ref("world/tar-dot", "v1"))
        .await
        .unwrap_or_else(|e| panic!("PullImage: {e}"));

    let mut rt = daemon.runtime().await;
    let pod = pod_config("tar-dot", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let ctr = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("main", &id, &["sleep", "600"]),
    )
    .await;
    let out = exec(&mut rt, &ctr, &["stat", "-c", "%a %u:%g", "/"], 10)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "751 1234:2345",
        "stat / in the container; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Samples the daemon's resident memory every 10 ms until told to stop; returns the peak.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl RssSampler {
    fn start(pid: i32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssSampler { stop, thread }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn raw(name: &str, entry_type: u8, data: Vec<u8>) -> RawEntry {
    RawEntry {
        name: name.as_bytes().to_vec(),
        entry_type,
        mode: 0o644,
        data,
        ..Default::default()
    }
}

/// `rootstock store verify` on the stopped daemon's root.
fn verify_store(daemon: &Daemon) {
    let args = daemon.path_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["store", "verify"]);
    let out = run_rootstock(&args, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_fail_naming_their_limit_in_little_memory_and_leave_a_clean_store() {
    let registry = Registry::start().await;
    let big = |b: u8| vec![b; 2 << 20];
    let mut deep = String::new();
    for _ in 0..20 {
        deep.push_str("d/");
    }
    deep.push('f');
    // A PAX 1.0 sparse file that claims 1 TiB and carries one 512-byte segment at its end.
    let tib: u64 = 1 << 40;
    let mut sparse_data = format!("1\n{}\n512\n", tib - 512).into_bytes();
    sparse_data.resize(512, 0);
    sparse_data.extend_from_slice(&[7u8; 512]);
    let sparse = RawEntry {
        pax: vec![
            ("GNU.sparse.major".into(), b"1".to_vec()),
            ("GNU.sparse.minor".into(), b"0".to_vec()),
            ("GNU.sparse.name".into(), b"huge".to_vec()),
            ("GNU.sparse.realsize".into(), tib.to_string().into_bytes()),
        ],
        ..raw("GNUSparseFile.0/huge", b'0', sparse_data)
    };
    let mut many = LayerBuilder::new();
    for i in 0..150 {
        many = many.file(&format!("f{i}"), "");
    }
    let cases: Vec<(&str, LayerBuilder, &str)> = vec![
        (
            "pax-record",
            LayerBuilder::new()
                .raw(raw("PaxHeaders/x", b'x', big(b'a')))
                .file("x", "x"),
            "PAX extended header of 2097152 bytes",
        ),
        (
            "gnu-long-name",
            LayerBuilder::new()
                .raw(raw("././@LongLink", b'L', big(b'n')))
                .file("x", "x"),
            "GNU long name of 2097152 bytes",
        ),
        (
            "gnu-long-link",
            LayerBuilder::new()
                .raw(raw("././@LongLink", b'K', big(b'k')))
                .symlink("x", "y"),
            "GNU long link name of 2097152 bytes",
        ),
        (
            "image-bytes",
            LayerBuilder::new().file("zeros", vec![0u8; 2 << 20]),
            "images.max_image_bytes",
        ),
        (
            "sparse-tebibyte",
            LayerBuilder::new().raw(sparse),
            "images.max_image_bytes",
        ),
        ("entries", many, "images.max_image_entries"),
        (
            "depth",
            LayerBuilder::new().file(&deep, "deep"),
            "images.max_path_depth",
        ),
    ];
    let mut images = Vec::new();
    for (name, layer, _) in &cases {
        let layer = layer.build(Compression::Gzip);
        assert!(
            layer.blob.len() < 16 << 10,
            "{name}: {} bytes",
            layer.blob.len()
        );
        let digest = layer.digest.clone();
        let image = ImageBuilder::new().layer(layer).build();
        registry
            .push(&format!("hostile/{name}"), "v1", &image)
            .await;
        images.push(digest);
    }
    // A config over containerd's 4 MiB bound.
    let fat = ImageBuilder::new()
        .layer(LayerBuilder::new().file("a", "a").build(Compression::Gzip))
        .label("padding", &"p".repeat(5 << 20))
        .build();
    registry.push("hostile/fat-config", "v1", &fat).await;

    let config = format!(
        "[images]\nmax_image_bytes = 1048576\nmax_image_entries = 100\nmax_path_depth = 16\n{}",
        insecure(&registry)
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    let pid = daemon.pid().as_raw();
    let mut client = daemon.images().await;
    let mut peak = 0;
    for ((name, _, limit), digest) in cases.iter().zip(&images) {
        let sampler = RssSampler::start(pid);
        let err = pull(
            &mut client,
            &registry.image_ref(&format!("hostile/{name}"), "v1"),
        )
        .await
        .expect_err(name);
        let rss = sampler.peak_kib();
        peak = peak.max(rss);
        println!(
            "{name:18} {:?} peak RSS {} KiB: {}",
            err.code(),
            rss,
            err.message()
        );
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{name}: {err:?}"
        );
        assert!(err.message().contains(limit), "{name}: {}", err.message());
        assert!(
            err.message().contains(digest.as_str()),
            "{name}: {}",
            err.message()
        );
    }
    let err = pull(&mut client, &registry.image_ref("hostile/fat-config", "v1"))
        .await
        .expect_err("fat config");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("4194304"), "{}", err.message());
    let hwm = status_kib(pid, "VmHWM:");
    println!("daemon peak RSS sampled {peak} KiB, VmHWM {hwm} KiB");
    assert!(peak < 100 << 10, "peak RSS {peak} KiB");
    assert!(hwm < 100 << 10, "VmHWM {hwm} KiB");
    let listed = client
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("daemon did not stop");
    verify_store(&daemon);
    let layers: Vec<_> = std::fs::read_dir(daemon.root_dir.join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "layer dirs left: {layers:?}");
}

/// A registry that serves some paths at once and drips others one byte per second: a tiny
/// HTTP/1.1 server on loopback. `closed` counts dripping responses the client hung up on.
struct DripRegistry {
    host: String,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct Route {
    body: Vec<u8>,
    content_type: &'static str,
    /// Drip the headers too (a slow manifest), or only the body (a slow blob).
    drip_headers: bool,
    drip_body: bool,
}

impl DripRegistry {
    async fn start(routes: std::collections::HashMap<String, Route>) -> Self {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let routes = std::sync::Arc::new(routes);
        let counter = closed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (routes, counter) = (routes.clone(), counter.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(text) = read_request_head(&mut sock).await else {
                            return;
                        };
                        let mut parts = text.split_whitespace();
                        let (method, path) =
                            (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        let route = routes.get(path).cloned();
                        let Some(route) = route else {
                            let body =
                                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}"#;
                            let head = format!(
                                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(body).await;
                            continue;
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\r\n",
                            route.content_type,
                            route.body.len()
                        );
                        let body: &[u8] = if method == "HEAD" { &[] } else { &route.body };
                        let mut out = Vec::new();
                        let drip_from = if route.drip_headers {
                            0
                        } else if route.drip_body {
                            head.len()
                        } else {
                            usize::MAX
                        };
                        out.extend_from_slice(head.as_bytes());
                        out.extend_from_slice(body);
                        let fast = drip_from.min(out.len());
                        if sock.write_all(&out[..fast]).await.is_err() {
                            return;
                        }
                        for byte in &out[fast..] {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if sock.write_all(&[*byte]).await.is_err()
                                || sock.flush().await.is_err()
                            {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                });
            }
        });
        DripRegistry { host, closed }
    }
}

fn fast(body: Vec<u8>, content_type: &'static str) -> Route {
    Route {
        body,
        content_type,
        drip_headers: false,
        drip_body: false,
    }
}

/// Routes serving `image` under `repo`; the layer's body drips when `drip_blob`, the
/// manifest (headers and all) when `drip_manifest`.
fn image_routes(
    routes: &mut std::collections::HashMap<String, Route>,
    repo: &str,
    image: &fixtures::Image,
    drip_manifest: bool,
    drip_blob: bool,
) {
    routes.insert("/v2/".into(), fast(b"{}".to_vec(), "application/json"));
    let manifest = Route {
        drip_headers: drip_manifest,
        ..fast(
            image.manifest.clone(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    };
    routes.insert(format!("/v2/{repo}/manifests/v1"), manifest.clone());
    routes.insert(
        format!("/v2/{repo}/manifests/{}", image.manifest_digest),
        manifest,
    );
    routes.insert(
        format!("/v2/{repo}/blobs/{}", image.config_digest),
        fast(image.config.clone(), "application/octet-stream"),
    );
    for layer in &image.layers {
        routes.insert(
            format!("/v2/{repo}/blobs/{}", layer.digest),
            Route {
                drip_body: drip_blob,
                ..fast(layer.blob.clone(), "application/octet-stream")
            },
        );
    }
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    let took = started.elapsed();
    println!("{what}: {took:?}");
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_registry_fails_in_time_and_blocks_nothing_else() {
    let registry = Registry::start().await;
    let unique = |tag: &str| {
        ImageBuilder::new()
            .layer(
                LayerBuilder::new()
                    .file("id", tag)
                    .file("pad", fixtures::noise(tag.len() as u64, 64 << 10))
                    .build(Compression::Gzip),
            )
            .build()
    };
    let mut routes = std::collections::HashMap::new();
    image_routes(&mut routes, "drip/blob", &unique("drip-blob"), false, true);
    image_routes(
        &mut routes,
        "drip/manifest",
        &unique("drip-manifest"),
        true,
        false,
    );
    image_routes(
        &mut routes,
        "drip/abandoned",
        &unique("drip-abandoned-x"),
        false,
        true,
    );
    let drip = DripRegistry::start(routes).await;
    registry.push("healthy/other", "v1", &unique("other")).await;
    registry
        .push("healthy/second", "v1", &unique("second-pull"))
        .await;

    let config = format!(
        "[images]\nrequest_timeout_secs = 3\nblob_stall_secs = 5\nblob_min_bytes_per_sec = 1000\n\
         [images.registries.\"{}\"]\ninsecure = true\n",
        drip.host
    );
    let (daemon, busybox) = daemon_with_busybox(&registry, &config).await;
    loopback_network(&daemon).await;
    let mut images = daemon.images().await;
    let other = pull(&mut images, &registry.image_ref("healthy/other", "v1"))
        .await
        .unwrap();
    let mut rt = daemon.runtime().await;
    let pod = pod_config("drip", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let ctr = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("main", &busybox, &["sleep", "600"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;

    // The blob drips: the pull is stuck in its download while everything else goes on.
    let slow = {
        let mut images = daemon.images().await;
        let image = format!("{}/drip/blob:v1", drip.host);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (pull(&mut images, &image).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!slow.is_finished(), "the dripping pull ended early");
    timed("RemoveContainer", async {
        rt.remove_container(RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap()
    })
    .await;
    timed("RemoveImage of another image", async {
        images
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: other.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
    })
    .await;
    timed("a second pull from a healthy registry", async {
        pull(&mut images, &registry.image_ref("healthy/second", "v1"))
            .await
            .unwrap()
    })
    .await;
    assert!(!slow.is_finished(), "the dripping pull ended early");
    let (result, took) = slow.await.unwrap();
    let err = result.expect_err("the dripping blob");
    println!("dripping blob failed after {took:?}: {}", err.message());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("blob_min_bytes_per_sec"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(12), "{took:?}");

    // A manifest that drips (headers and all) hits the request deadline.
    let started = std::time::Instant::now();
    let err = pull(&mut images, &format!("{}/drip/manifest:v1", drip.host))
        .await
        .expect_err("the dripping manifest");
    let took = started.elapsed();
    println!("dripping manifest failed after {took:?}: {}", err.message());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("request_timeout_secs"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(8), "{took:?}");

    // A pull whose caller goes away stops downloading: the registry sees the hang-up.
    let abandoned = tokio::time::timeout(
        Duration::from_secs(2),
        pull(&mut images, &format!("{}/drip/abandoned:v1", drip.host)),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the abandoned pull finished: {abandoned:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while drip.closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned pull kept downloading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3000_level_tree_pulls_is_removed_and_restarts_with_256_fds() {
    let registry = Registry::start().await;
    let mut layer = LayerBuilder::new();
    let mut path = String::new();
    for _ in 0..3000 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        layer = layer.dir(&path);
    }
    layer = layer.file(&format!("{path}/bottom"), "deep");
    let layer = layer.build(Compression::Gzip);
    println!("deep layer: {} bytes compressed", layer.blob.len());
    registry
        .push("deep/tree", "v1", &ImageBuilder::new().layer(layer).build())
        .await;
    let config = format!("[images]\nmax_path_depth = 4000\n{}", insecure(&registry));
    let mut daemon = Daemon::start_with_config(&config).await;
    let mut images = daemon.images().await;
    let started = std::time::Instant::now();
    let id = pull(&mut images, &registry.image_ref("deep/tree", "v1"))
        .await
        .unwrap_or_else(|e| panic!("PullImage: {e}"));
    println!("pulled the deep tree in {:?}", started.elapsed());

    // Restart with few descriptors while the tree exists, then remove it, then again.
    daemon.set_nofile_soft(Some(256));
    daemon.restart().await;
    let mut images = daemon.images().await;
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: id,
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage: {e}"));
    daemon.restart().await;
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid().as_raw())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert!(
        open_files.split_whitespace().nth(3) == Some("256"),
        "{open_files}"
    );
    let mut images = daemon.images().await;
    let listed = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("daemon did not stop");
    verify_store(&daemon);
    for dir in ["layers", "trees", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(daemon.root_dir.join(dir))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{dir} left: {left:?}");
    }
}
