//! Registries that misbehave on purpose, as tiny HTTP servers on loopback: a manifest larger
//! than the 4 MiB the store reads, and redirects to another host, which must never carry the
//! credentials along.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use rootstock_imagestore::{ErrorKind, ImageStore, ImagesConfig, RegistryConfig};
use rootstock_testkit::fixtures::{Compression, ImageBuilder, LayerBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One canned answer.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn ok(body: Vec<u8>, content_type: &str) -> Answer {
    Answer {
        status: 200,
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
    }
}

fn redirect(to: String) -> Answer {
    Answer {
        status: 307,
        headers: vec![("Location".into(), to)],
        body: vec![],
    }
}

/// `(path, Authorization header)` of every request.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A server answering by path; logs every request.
struct Server {
    host: String,
    log: RequestLog,
}

impl Server {
    async fn start(answers: Arc<Mutex<HashMap<String, Answer>>>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (answers, log) = (answers.clone(), log2.clone());
                tokio::spawn(async move {
                    loop {
                        let mut req = Vec::new();
                        let mut b = [0u8; 1];
                        while !req.ends_with(b"\r\n\r\n") {
                            match sock.read(&mut b).await {
                                Ok(1) => req.push(b[0]),
                                _ => return,
                            }
                        }
                        let text = String::from_utf8_lossy(&req).into_owned();
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let auth = text
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .map(|l| l.to_owned());
                        log.lock().unwrap().push((path.clone(), auth));
                        let answer = answers.lock().unwrap().get(&path).cloned();
                        let answer = answer.unwrap_or(Answer {
                            status: 404,
                            headers: vec![("Content-Type".into(), "application/json".into())],
                            body: br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#
                                .to_vec(),
                        });
                        let mut head = format!("HTTP/1.1 {} X\r\n", answer.status);
                        for (k, v) in &answer.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        let head = format!("{head}Content-Length: {}\r\n\r\n", answer.body.len());
                        if sock.write_all(head.as_bytes()).await.is_err()
                            || sock.write_all(&answer.body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Server { host, log }
    }
}

fn config(hosts: &[&str], credentials_for: &str) -> rootstock_imagestore::ImagesConfig {
    let mut config = insecure(hosts[0]);
    for h in hosts {
        config.registries.insert(
            (*h).to_owned(),
            RegistryConfig {
                insecure: true,
                username: (*h == credentials_for).then(|| USER.to_owned()),
                password: (*h == credentials_for).then(|| PASSWORD.to_owned()),
                ..Default::default()
            },
        );
    }
    config
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_without_reading_it_whole() {
    let answers = Arc::new(Mutex::new(HashMap::new()));
    let server = Server::start(answers.clone()).await;
    let mut huge = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'p', 5 << 20));
    huge.extend_from_slice(br#""}}"#);
    {
        let mut a = answers.lock().unwrap();
        a.insert("/v2/".into(), ok(b"{}".to_vec(), "application/json"));
        a.insert(
            "/v2/big/manifests/v1".into(),
            ok(huge, "application/vnd.oci.image.manifest.v1+json"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), &insecure(&server.host)).unwrap();
    let err = store
        .pull(&format!("{}/big:v1", server.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err:?}");
    assert!(err.to_string().contains("4194304"), "{err}");
    assert!(store.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn redirects_to_another_host_never_carry_the_credentials() {
    let image = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("redirected", "yes")
                .build(Compression::Gzip),
        )
        .build();
    // B holds the content; A (which wants credentials) redirects everything to B.
    let b_answers = Arc::new(Mutex::new(HashMap::new()));
    let b = Server::start(b_answers.clone()).await;
    let a_answers = Arc::new(Mutex::new(HashMap::new()));
    let a = Server::start(a_answers.clone()).await;
    {
        let mut bm = b_answers.lock().unwrap();
        let media = "application/vnd.oci.image.manifest.v1+json";
        bm.insert(
            "/v2/app/manifests/v1".into(),
            ok(image.manifest.clone(), media),
        );
        bm.insert(
            format!("/v2/app/blobs/{}", image.config_digest),
            ok(image.config.clone(), "application/octet-stream"),
        );
        let mut am = a_answers.lock().unwrap();
        am.insert("/v2/".into(), ok(b"{}".to_vec(), "application/json"));
        am.insert(
            "/v2/app/manifests/v1".into(),
            redirect(format!("http://{}/v2/app/manifests/v1", b.host)),
        );
        am.insert(
            format!("/v2/app/blobs/{}", image.config_digest),
            redirect(format!(
                "http://{}/v2/app/blobs/{}",
                b.host, image.config_digest
            )),
        );
        for layer in &image.layers {
            let path = format!("/v2/app/blobs/{}", layer.digest);
            bm.insert(
                path.clone(),
                ok(layer.blob.clone(), "application/octet-stream"),
            );
            am.insert(path.clone(), redirect(format!("http://{}{path}", b.host)));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), &config(&[&a.host, &b.host], &a.host)).unwrap();
    store
        .pull(&format!("{}/app:v1", a.host), None)
        .await
        .unwrap();
    let a_log = a.log.lock().unwrap().clone();
    let b_log = b.log.lock().unwrap().clone();
    assert!(
        a_log
            .iter()
            .any(|(p, auth)| p.contains("/app/") && auth.is_some()),
        "A never saw the credentials: {a_log:?}"
    );
    assert!(
        b_log.len() >= 3,
        "B served the manifest, config and layer: {b_log:?}"
    );
    let leaked: Vec<_> = b_log.iter().filter(|(_, auth)| auth.is_some()).collect();
    assert!(
        leaked.is_empty(),
        "credentials sent to {}: {leaked:?}",
        b.host
    );
}

#[tokio::test]
async fn a_tree_that_cannot_be_removed_is_quarantined_and_open_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    drop(ImageStore::open(&root, &ImagesConfig::default()).unwrap());
    // A tree directory without a record, that cannot be removed: a mount point inside it.
    let bad = root.join("trees").join("ab".repeat(32));
    let mnt = bad.join("busy");
    std::fs::create_dir_all(&mnt).unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("keep"), "keep").unwrap();
    rustix::mount::mount_bind(&source, &mnt).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _guard = Unmount(mnt.clone());
    // The sweep never enters another mount: the tree is moved aside, the mount's content
    // untouched.
    let store = ImageStore::open(&root, &ImagesConfig::default()).unwrap();
    assert!(!bad.exists(), "the bad tree is still in trees/");
    let quarantined: Vec<_> = std::fs::read_dir(root.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(
        quarantined[0].starts_with(&"ab".repeat(32)),
        "{quarantined:?}"
    );
    assert_eq!(
        std::fs::read_to_string(source.join("keep")).unwrap(),
        "keep"
    );
    drop(store);
    let moved = root.join("quarantine").join(&quarantined[0]).join("busy");
    rustix::mount::unmount(&moved, rustix::mount::UnmountFlags::DETACH).unwrap();
}
