//! CreateContainer: resolve the image (kubelet sends the `sha256:` id PullImage returned, or
//! a name), build the runtime crate's `ContainerSpec` from the CRI config, the image config
//! and the sandbox, and only then lease the tree as the overlay's lower directory and
//! create, the lease beside the create's first steps. The lease sits on an undo stack that
//! gives it back on every way out but success.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, CreateContainerResponse,
    LinuxContainerResources, LinuxContainerSecurityContext, MountPropagation, NamespaceMode,
    SecurityProfile, security_profile::ProfileType,
};
use rootstock_imagestore::Image;
use rootstock_runtime::devices::DeviceRequest;
use rootstock_runtime::spec::{
    AppArmorProfile, BindMount, ContainerSpec, ImageConfig, PidMode, Propagation, Resources,
    SeccompProfile, SecurityContext,
};
use rootstock_runtime::steps::Step;
use rootstock_runtime::{ContainerId, CreateRequest, SandboxInfo, SandboxState, Signal};

use super::meta::{ContainerMeta, MountMeta, SandboxMeta, container_name, new_id, to_json};
use super::undo::AsyncUndo;
use super::{RuntimeApi, blocking, validate};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, CriError> {
        let sandbox_id = self.sandbox_id(&req.pod_sandbox_id)?;
        let config = req.config.ok_or_else(|| {
            CriError::InvalidArgument("CreateContainer: no container config given".to_owned())
        })?;
        let metadata = config.metadata.clone().unwrap_or_default();
        if metadata.name.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: container metadata.name is empty".to_owned(),
            ));
        }
        // Everything the request names is checked before anything is made.
        validate::check_mounts(&config)?;
        if let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
            validate::check_resources(r, "CreateContainer: linux")?;
        }
        // The monitor and the runtime will move processes into cgroups: started before the
        // image lease, so that the lock's wait overlaps it (see cgroup_warm).
        rootstock_runtime::cgroup_warm::warm();
        // Held until the container is recorded: a concurrent StopPodSandbox then sees it.
        let _locked = self.lock_sandbox(sandbox_id.as_str()).await;
        let sandbox = self.rt.sandbox(&sandbox_id)?;
        if sandbox.record.state != SandboxState::Ready {
            return Err(CriError::FailedPrecondition(format!(
                "sandbox {sandbox_id}: not ready (stopped): cannot create containers in it"
            )));
        }
        let sandbox_meta = SandboxMeta::of(&sandbox);
        let log_path = validate::log_path(&sandbox_meta.log_directory, &config.log_path)?;
        let id = ContainerId::new(new_id()?)?;
        let reservation = self.names.reserve(
            "container",
            &container_name(sandbox_id.as_str(), &metadata.name, metadata.attempt),
            id.as_str(),
        )?;

        let requested = config
            .image
            .as_ref()
            .map(|i| i.image.trim().to_owned())
            .unwrap_or_default();
        if requested.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: no image given (ContainerConfig.image is empty)".to_owned(),
            ));
        }
        let image = self.store.status(&requested)?.ok_or_else(|| {
            CriError::NotFound(format!("image {requested:?} not found: pull it first"))
        })?;
        let mut spec = container_spec(&config, &image, &sandbox)?;
        if let Some(target) = self.pid_target(&config, &sandbox_id)? {
            spec.namespaces.pid = PidMode::Target(target);
        }
        // kubelet makes the pod's log directory; the container's may be new.
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                CriError::Internal(format!("creating log directory {}: {e}", dir.display()))
            })?;
        }
        let meta = container_meta(&id, &config, &metadata, &requested, &image);

        // Everything is checked and built: only now is the tree leased, and the lease is
        // given back on every way out but success. The lease's durable commit overlaps the
        // monitor's start and the mount of the tree it names; `<runtime> create` waits for it.
        let Some(rootfs_lower) = image.tree_path().map(ToOwned::to_owned) else {
            return Err(CriError::NotFound(format!(
                "image {requested:?} has no layers, so no root filesystem to run"
            )));
        };
        let mut undo = AsyncUndo::new(format_args!("container {id}"));
        let (store, lease) = (self.store.clone(), id.to_string());
        undo.push("release the image tree lease", async move {
            store.release(&lease).await
        });
        let (leased_tx, leased_rx) = std::sync::mpsc::sync_channel(1);
        let leasing = async {
            let started = std::time::Instant::now();
            let leased = self.lease_tree(&image, &id).await;
            if leased.is_ok() {
                self.metrics.step_done(Step::ImageLease, started.elapsed());
            }
            rootstock_fsutil::failpoint::hit("container.lease-taken");
            let _ = leased_tx.send(matches!(&leased, Ok(p) if *p == rootfs_lower));
            leased
        };
        let request = CreateRequest {
            id: id.clone(),
            handler: sandbox_meta.runtime_handler.clone(),
            spec,
            rootfs_lower: rootfs_lower.clone(),
            log_path,
            sandbox_id: Some(sandbox_id.clone()),
            client_data: to_json(&meta).into(),
        };
        let rt = self.rt.clone();
        let creating = blocking(move || {
            rt.create_container_when(request, || match leased_rx.recv() {
                Ok(true) => Ok(()),
                _ => Err("the image tree lease was not taken".to_owned()),
            })
        });
        let (leased, created) = tokio::join!(leasing, creating);
        // The lease's own error says best why a create it stopped failed.
        let created = match leased {
            Ok(path) if path != rootfs_lower => Err(CriError::Internal(format!(
                "image {requested:?}: the leased tree {} is not the mounted {}",
                path.display(),
                rootfs_lower.display()
            ))),
            Ok(_) => created,
            Err(err) => Err(err),
        };
        match created {
            Ok(_) => {
                undo.commit();
                reservation.keep();
                tracing::info!(container = %id, sandbox = %sandbox_id, name = %metadata.name, "container created");
                Ok(CreateContainerResponse {
                    container_id: id.to_string(),
                })
            }
            Err(err) => {
                undo.run().await;
                Err(err)
            }
        }
    }

    /// The PID namespace to join for CRI's `TARGET` mode: the target container's, which
    /// must be running in the same pod. Other modes follow the pod's.
    fn pid_target(
        &self,
        config: &ContainerConfig,
        sandbox_id: &rootstock_runtime::SandboxId,
    ) -> Result<Option<PathBuf>, CriError> {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let Some(ns) = ns.filter(|ns| ns.pid == NamespaceMode::Target as i32) else {
            return Ok(None);
        };
        if ns.target_id.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: linux.security_context.namespace_options.target_id is empty \
                 (PID mode TARGET needs the container to share with)"
                    .to_owned(),
            ));
        }
        let target = self.container_id(&ns.target_id)?;
        let info = self.rt.container(&target)?;
        if info.record.sandbox_id.as_ref() != Some(sandbox_id) {
            return Err(CriError::InvalidArgument(format!(
                "CreateContainer: namespace_options.target_id {target} is in another pod"
            )));
        }
        Ok(Some(self.rt.pid_namespace_of(&target)?))
    }

    /// Leases the image's flattened root filesystem for the container's lifetime, under the
    /// container's id: the store persists the lease, so the tree outlives RemoveImage and
    /// daemon restarts until RemoveContainer gives it back.
    async fn lease_tree(&self, image: &Image, id: &ContainerId) -> Result<PathBuf, CriError> {
        Ok(self
            .store
            .lease_tree(&image.id.to_string(), id.as_str())
            .await?)
    }

    /// Gives a tree lease back (RemoveContainer). A failure only delays the tree's
    /// collection, so it is logged, not returned.
    pub(super) async fn release_tree(&self, lease: Option<&str>) {
        if let Some(lease) = lease
            && let Err(e) = self.store.release(lease).await
        {
            tracing::warn!(lease, "releasing the image tree lease: {e}");
        }
    }
}

/// The CRI values kept with the container (echoed by status and list, also after a
/// restart).
fn container_meta(
    id: &ContainerId,
    config: &ContainerConfig,
    metadata: &ContainerMetadata,
    requested: &str,
    image: &Image,
) -> ContainerMeta {
    ContainerMeta {
        version: 1,
        name: metadata.name.clone(),
        attempt: metadata.attempt,
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        image_requested: requested.to_owned(),
        image_id: image.id.to_string(),
        image_tag: image
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string()),
        image_ref: image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string()),
        // The lease is named after the container.
        tree_lease: Some(id.to_string()),
        stop_signal: Signal::stop_signal(&image.config.stop_signal).as_raw(),
        mounts: config
            .mounts
            .iter()
            .map(|m| MountMeta {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
            })
            .collect(),
        resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
        config: Some(config.clone()),
    }
}

fn container_spec(
    config: &ContainerConfig,
    image: &Image,
    sandbox: &SandboxInfo,
) -> Result<ContainerSpec, CriError> {
    let linux = config.linux.clone().unwrap_or_default();
    Ok(ContainerSpec {
        command: config.command.clone(),
        args: config.args.clone(),
        env: config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        working_dir: (!config.working_dir.is_empty()).then(|| config.working_dir.clone()),
        image: ImageConfig {
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        },
        hostname: sandbox.container_hostname(),
        mounts: config
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let idmapped = super::userns::mount_idmapped(i, m, sandbox.record.userns.as_ref())?;
                Ok(BindMount {
                    container_path: PathBuf::from(&m.container_path),
                    host_path: PathBuf::from(&m.host_path),
                    readonly: m.readonly,
                    propagation: match MountPropagation::try_from(m.propagation) {
                        Ok(MountPropagation::PropagationHostToContainer) => {
                            Propagation::HostToContainer
                        }
                        Ok(MountPropagation::PropagationBidirectional) => {
                            Propagation::Bidirectional
                        }
                        _ => Propagation::Private,
                    },
                    recursive_readonly: m.recursive_read_only,
                    idmapped,
                })
            })
            .collect::<Result<_, CriError>>()?,
        sandbox_mounts: sandbox.container_mounts(),
        namespaces: sandbox.container_namespaces(),
        cgroup_parent: sandbox.record.cgroup_parent.clone(),
        security: security(linux.security_context.as_ref())?,
        resources: resources(linux.resources.as_ref()),
        tty: config.tty,
        annotations: config
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        devices: config
            .devices
            .iter()
            .map(|d| DeviceRequest {
                container_path: PathBuf::from(&d.container_path),
                host_path: PathBuf::from(&d.host_path),
                permissions: d.permissions.clone(),
            })
            .collect(),
        cdi_devices: rootstock_runtime::cdi::requested(
            config.cdi_devices.iter().map(|d| d.name.as_str()),
            config
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
    })
}

fn security(sc: Option<&LinuxContainerSecurityContext>) -> Result<SecurityContext, CriError> {
    let Some(sc) = sc else {
        return Ok(SecurityContext::default());
    };
    let id = |what: &str, v: i64| {
        u32::try_from(v).map_err(|_| {
            CriError::InvalidArgument(format!("security context: {what} {v} is not a valid id"))
        })
    };
    // The deprecated strings are still honoured when the profile fields are unset, as
    // containerd does (older kubelets and crictl configs send them).
    #[allow(deprecated)]
    let (seccomp_path, apparmor_name) = (&sc.seccomp_profile_path, &sc.apparmor_profile);
    let seccomp = match profile("seccomp", sc.seccomp.as_ref(), seccomp_path)? {
        Profile::Unconfined => SeccompProfile::Unconfined,
        Profile::RuntimeDefault => SeccompProfile::RuntimeDefault,
        Profile::Localhost(path) => SeccompProfile::Localhost(PathBuf::from(path)),
    };
    let apparmor = match profile("apparmor", sc.apparmor.as_ref(), apparmor_name)? {
        Profile::Unconfined => AppArmorProfile::Unconfined,
        Profile::RuntimeDefault => AppArmorProfile::RuntimeDefault,
        Profile::Localhost(name) => AppArmorProfile::Localhost(name),
    };
    let caps = sc.capabilities.clone().unwrap_or_default();
    Ok(SecurityContext {
        run_as_user: sc
            .run_as_user
            .map(|v| id("run_as_user", v.value))
            .transpose()?,
        run_as_username: (!sc.run_as_username.is_empty()).then(|| sc.run_as_username.clone()),
        run_as_group: sc
            .run_as_group
            .map(|v| id("run_as_group", v.value))
            .transpose()?,
        supplemental_groups: sc
            .supplemental_groups
            .iter()
            .map(|g| id("supplemental group", *g))
            .collect::<Result<_, _>>()?,
        supplemental_groups_strict: sc.supplemental_groups_policy
            == k8s_cri::v1::SupplementalGroupsPolicy::Strict as i32,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        privileged: sc.privileged,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        masked_paths: (!sc.masked_paths.is_empty()).then(|| sc.masked_paths.clone()),
        readonly_paths: (!sc.readonly_paths.is_empty()).then(|| sc.readonly_paths.clone()),
        seccomp,
        apparmor,
    })
}

/// A CRI security profile, whichever field carried it.
#[derive(Debug, PartialEq, Eq)]
enum Profile {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The profile from the `SecurityProfile` field, else from the deprecated string field
/// (`runtime/default`, `docker/default`, `unconfined`, `localhost/<ref>`), else none — the
/// rules of containerd's `generateSeccompSecurityProfile` / `generateSecurityProfile`.
fn profile(
    what: &str,
    sp: Option<&SecurityProfile>,
    deprecated: &str,
) -> Result<Profile, CriError> {
    const LOCALHOST: &str = "localhost/";
    let Some(sp) = sp else {
        return match deprecated {
            "" | "unconfined" => Ok(Profile::Unconfined),
            "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
            p => match p.strip_prefix(LOCALHOST) {
                Some(r) if !r.is_empty() => Ok(Profile::Localhost(r.to_owned())),
                _ => Err(CriError::InvalidArgument(format!(
                    "unknown {what} profile {p:?} (runtime/default, unconfined or localhost/<profile>)"
                ))),
            },
        };
    };
    let kind = ProfileType::try_from(sp.profile_type).map_err(|_| {
        CriError::InvalidArgument(format!("unknown {what} profile type {}", sp.profile_type))
    })?;
    if kind != ProfileType::Localhost && !sp.localhost_ref.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "{what}: localhost_ref is only for a Localhost profile"
        )));
    }
    match kind {
        ProfileType::Unconfined => Ok(Profile::Unconfined),
        ProfileType::RuntimeDefault => Ok(Profile::RuntimeDefault),
        // The prefix is trimmed just in case, as containerd does.
        ProfileType::Localhost => match sp.localhost_ref.trim_start_matches(LOCALHOST) {
            "" => Err(CriError::InvalidArgument(format!(
                "{what}: a Localhost profile needs localhost_ref"
            ))),
            r => Ok(Profile::Localhost(r.to_owned())),
        },
    }
}

/// CRI's "0 means unset" becomes `None`.
pub(super) fn resources(r: Option<&LinuxContainerResources>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let pos_u = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    let pos_i = |v: i64| (v > 0).then_some(v);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Resources {
        // kubelet always sends it (-997 … 1000); 0 is also "inherit", which is the default.
        oom_score_adj: i32::try_from(r.oom_score_adj).ok().filter(|v| *v != 0),
        cpu_shares: pos_u(r.cpu_shares),
        // Negative: no limit (`max`), which a resize removing the limit needs.
        cpu_quota: (r.cpu_quota != 0).then_some(r.cpu_quota),
        cpu_period: pos_u(r.cpu_period),
        cpuset_cpus: text(&r.cpuset_cpus),
        cpuset_mems: text(&r.cpuset_mems),
        memory_limit_bytes: pos_i(r.memory_limit_in_bytes),
        memory_swap_limit_bytes: (r.memory_swap_limit_in_bytes != 0)
            .then_some(r.memory_swap_limit_in_bytes),
        // CRI carries no per-container pids limit: kubelet sets it on the pod cgroup.
        pids_limit: None,
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .filter(|h| !h.page_size.is_empty())
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn profiles_from_the_field_or_the_deprecated_string() {
        let sp = |t: ProfileType, r: &str| SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.to_owned(),
        };
        assert_eq!(profile("seccomp", None, "").ok(), Some(Profile::Unconfined));
        assert_eq!(
            profile("seccomp", None, "runtime/default").ok(),
            Some(Profile::RuntimeDefault)
        );
        assert_eq!(
            profile("seccomp", None, "localhost//etc/p.json").ok(),
            Some(Profile::Localhost("/etc/p.json".into()))
        );
        assert!(profile("seccomp", None, "bogus").is_err());
        // The field wins over the deprecated string.
        let field = sp(ProfileType::Localhost, "/p.json");
        assert_eq!(
            profile("seccomp", Some(&field), "unconfined").ok(),
            Some(Profile::Localhost("/p.json".into()))
        );
        assert_eq!(
            profile("apparmor", Some(&sp(ProfileType::RuntimeDefault, "")), "").ok(),
            Some(Profile::RuntimeDefault)
        );
        assert!(profile("seccomp", Some(&sp(ProfileType::Unconfined, "/x")), "").is_err());
        assert!(profile("seccomp", Some(&sp(ProfileType::Localhost, "")), "").is_err());
    }

    #[test]
    fn resources_read_cri_zeroes_as_unset() {
        assert_eq!(resources(None), Resources::default());
        let r = resources(Some(&LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: -1,
            cpu_period: 0,
            memory_limit_in_bytes: 1 << 30,
            memory_swap_limit_in_bytes: 0,
            oom_score_adj: -997,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![
                k8s_cri::v1::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                },
                k8s_cri::v1::HugepageLimit {
                    page_size: String::new(),
                    limit: 1,
                },
            ],
            unified: [("memory.high".to_owned(), "1G".to_owned())].into(),
            ..Default::default()
        }));
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpu_quota, Some(-1), "negative: no limit, kept");
        assert_eq!(r.cpu_period, None);
        assert_eq!(r.memory_limit_bytes, Some(1 << 30));
        assert_eq!(r.memory_swap_limit_bytes, None);
        assert_eq!(r.oom_score_adj, Some(-997));
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(r.cpuset_mems, None);
        assert_eq!(r.hugepage_limits, [("2MB".to_owned(), 4 << 20)]);
        assert_eq!(r.unified["memory.high"], "1G");
        assert_eq!(r.pids_limit, None, "kubelet sets it on the pod cgroup");
    }

    #[test]
    fn security_context_ids_and_profiles_are_checked() {
        assert_eq!(security(None).unwrap(), SecurityContext::default());
        let sc = LinuxContainerSecurityContext {
            run_as_user: Some(k8s_cri::v1::Int64Value { value: 1000 }),
            run_as_username: "app".into(),
            supplemental_groups: vec![10, 20],
            supplemental_groups_policy: k8s_cri::v1::SupplementalGroupsPolicy::Strict as i32,
            readonly_rootfs: true,
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        };
        let got = security(Some(&sc)).unwrap();
        assert_eq!(got.run_as_user, Some(1000));
        assert_eq!(got.run_as_username.as_deref(), Some("app"));
        assert_eq!(got.supplemental_groups, [10, 20]);
        assert!(got.supplemental_groups_strict && got.readonly_rootfs);
        assert_eq!(got.seccomp, SeccompProfile::RuntimeDefault);
        assert_eq!(got.apparmor, AppArmorProfile::Unconfined);
        assert_eq!(got.masked_paths, None, "empty keeps the defaults");
        for bad in [
            LinuxContainerSecurityContext {
                run_as_user: Some(k8s_cri::v1::Int64Value { value: -1 }),
                ..Default::default()
            },
            LinuxContainerSecurityContext {
                supplemental_groups: vec![1 << 40],
                ..Default::default()
            },
        ] {
            match security(Some(&bad)) {
                Err(CriError::InvalidArgument(m)) => assert!(m.contains("not a valid id"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn container_spec_takes_the_sandbox_the_image_and_the_mounts() {
        use rootstock_runtime::sandbox::SandboxRecord;
        let mut record = SandboxRecord::unknown(rootstock_runtime::SandboxId::new("s1").unwrap());
        record.state = SandboxState::Ready;
        record.hostname = "web-0".into();
        record.cgroup_parent = "/kubepods/pod1".into();
        let sandbox = SandboxInfo {
            record,
            dir: PathBuf::from("/run/rootstock/sandboxes/s1"),
        };
        let image = Image {
            id: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: 0,
            user: rootstock_imagestore::ImageUser::Name("nobody".into()),
            config: rootstock_imagestore::RuntimeConfig {
                entrypoint: vec!["/entry".into()],
                user: "nobody".into(),
                ..Default::default()
            },
            created: None,
            diff_ids: Vec::new(),
            chain_id: None,
            layers: Vec::new(),
            pinned: false,
            tree: None,
        };
        let config = ContainerConfig {
            command: vec!["/bin/sh".into()],
            envs: vec![k8s_cri::v1::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            mounts: vec![k8s_cri::v1::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let spec = container_spec(&config, &image, &sandbox).unwrap();
        assert_eq!(spec.command, ["/bin/sh"]);
        assert_eq!(spec.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(spec.working_dir, None, "empty: the image's");
        assert_eq!(spec.image.entrypoint, ["/entry"]);
        assert_eq!(spec.image.user, "nobody");
        assert_eq!(spec.hostname.as_deref(), Some("web-0"));
        assert_eq!(spec.cgroup_parent, "/kubepods/pod1");
        assert_eq!(spec.mounts[0].propagation, Propagation::HostToContainer);
        assert!(spec.mounts[0].readonly);
        assert_eq!(
            spec.sandbox_mounts.len(),
            4,
            "hostname, hosts, resolv.conf, shm"
        );
    }
}
