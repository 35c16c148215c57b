//! The process part of the spec: args and env after CRI's override rules, working
//! directory, user and groups (resolved from the image's `/etc/passwd`), `oom_score_adj`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, User};

use super::security::capabilities;
use super::{ContainerSpec, HostFacts};
use crate::error::{Error, Result};
use crate::user::{self, UserRequest};

/// The image config values a container inherits (OCI image config `config` section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CRI's override rules (containerd's, inherited from Docker): `command` replaces the
/// entrypoint, and then the image's cmd is not used either; `args` alone replace the cmd.
pub fn process_args(s: &ContainerSpec) -> Vec<String> {
    let mut command = s.command.clone();
    let mut args = s.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = s.image.cmd.clone();
        }
        // `ENTRYPOINT [""]` means "no entrypoint".
        if !(s.image.entrypoint.len() == 1 && s.image.entrypoint[0].is_empty()) {
            command = s.image.entrypoint.clone();
        }
    }
    command.extend(args);
    command
}

/// Image env, then CRI env replacing same-named keys, then `HOSTNAME`; `PATH` defaulted.
pub fn process_env(s: &ContainerSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for kv in &s.image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    if let Some(h) = &s.hostname {
        // Before the CRI env: a container that sets HOSTNAME itself keeps its value.
        set("HOSTNAME", h);
    }
    for (k, v) in &s.env {
        set(k, v);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_owned());
    }
    out
}

fn user_request(s: &ContainerSpec) -> UserRequest<'_> {
    UserRequest {
        image_user: &s.image.user,
        run_as_user: s.security.run_as_user,
        run_as_username: s.security.run_as_username.as_deref(),
        run_as_group: s.security.run_as_group,
        supplemental_groups: &s.security.supplemental_groups,
        strict_groups: s.security.supplemental_groups_strict,
    }
}

pub(super) fn process(
    s: &ContainerSpec,
    rootfs: &Path,
    host: &HostFacts,
) -> Result<(Process, Option<(i32, i32)>)> {
    let args = process_args(s);
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command specified: neither the container config nor the image has one".to_owned(),
        ));
    }
    let resolved = user::resolve(rootfs, &user_request(s))?;
    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    // The primary group is listed among the supplementary ones too, as containerd does
    // (`ensureAdditionalGids`): `id -G` and ContainerStatus.user then show it, as critest's
    // SupplementalGroupsPolicy specs expect.
    let mut gids = vec![resolved.gid];
    gids.extend(
        resolved
            .additional_gids
            .iter()
            .filter(|g| **g != resolved.gid),
    );
    user.set_additional_gids(Some(gids));

    let cwd = s
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(s.image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());

    let (oom, clamped) = match s.resources.oom_score_adj {
        Some(adj) if adj < host.oom_score_adj && !host.can_lower_oom_score_adj => {
            (Some(host.oom_score_adj), Some((adj, host.oom_score_adj)))
        }
        other => (other, None),
    };

    let mut p = Process::default();
    p.set_terminal(Some(s.tty));
    p.set_args(Some(args));
    p.set_env(Some(process_env(s)));
    p.set_cwd(PathBuf::from(cwd));
    p.set_user(user);
    p.set_capabilities(Some(capabilities(&s.security, host)?));
    p.set_no_new_privileges(Some(s.security.no_new_privs));
    // Inherit the monitor's rlimits: never raise a hard limit above the daemon's own.
    p.set_rlimits(None);
    p.set_oom_score_adj(oom);
    Ok((p, clamped))
}
