//! Resolving the container's user from the image's `/etc/passwd` and `/etc/group`, as
//! containerd does: the CRI security context wins over the image's `USER`, names are looked
//! up in the image (never on the host), and the user's group memberships are added.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

/// The process identity to put in the OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (memberships from `/etc/group` plus the requested ones).
    pub additional_gids: Vec<u32>,
}

/// Who the container runs as, as the request and the image ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRequest<'a> {
    /// The image config's `User` (`""`, `uid`, `name`, `uid:gid`, `name:group`).
    pub image_user: &'a str,
    /// CRI `run_as_user`.
    pub run_as_user: Option<u32>,
    /// CRI `run_as_username`.
    pub run_as_username: Option<&'a str>,
    /// CRI `run_as_group`.
    pub run_as_group: Option<u32>,
    /// CRI `supplemental_groups`.
    pub supplemental_groups: &'a [u32],
    /// CRI `SupplementalGroupsPolicy` `Strict`: only the requested groups, none from the
    /// image's `/etc/group`.
    pub strict_groups: bool,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `<rootfs>/etc/<name>`, refusing symlinks on the way: an image's `/etc/passwd`
/// pointing at `/etc/shadow` must resolve inside the image, not on the host; treating it as
/// absent is the safe reading.
fn read_etc(rootfs: &Path, name: &str) -> Option<String> {
    let etc = rootfs.join("etc");
    if !fs::symlink_metadata(&etc).ok()?.is_dir() {
        return None;
    }
    let file = etc.join(name);
    if !fs::symlink_metadata(&file).ok()?.is_file() {
        return None;
    }
    fs::read_to_string(file).ok()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_etc(rootfs, "passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<GroupEntry> {
    read_etc(rootfs, "group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3).then_some(())?;
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves the user against the image's root filesystem `rootfs`.
pub fn resolve(rootfs: &Path, req: &UserRequest<'_>) -> Result<ResolvedUser> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_none() {
        // CRI: "run_as_group should only be specified when run_as_user or run_as_username is
        // specified; otherwise, the runtime MUST error".
        return Err(Error::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".to_owned(),
        ));
    }
    let users = passwd(rootfs);
    let (user_part, group_part) = if req.run_as_user.is_some() || req.run_as_username.is_some() {
        (None, None)
    } else {
        match req.image_user.split_once(':') {
            Some((u, g)) => (Some(u), Some(g)),
            None => (Some(req.image_user), None),
        }
    };
    // (uid, primary gid, user name for group memberships)
    let (uid, mut gid, name) = if let Some(uid) = req.run_as_user {
        match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        }
    } else if let Some(name) = req.run_as_username {
        let e = users
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::User {
                user: name.to_owned(),
                message: "not found in the image's /etc/passwd".to_owned(),
            })?;
        (e.uid, e.gid, Some(e.name.clone()))
    } else {
        match user_part {
            None | Some("") => (
                0,
                0,
                users.iter().find(|e| e.uid == 0).map(|e| e.name.clone()),
            ),
            Some(u) => match u.parse::<u32>() {
                Ok(uid) => match users.iter().find(|e| e.uid == uid) {
                    Some(e) => (uid, e.gid, Some(e.name.clone())),
                    None => (uid, 0, None),
                },
                Err(_) => {
                    let e = users
                        .iter()
                        .find(|e| e.name == u)
                        .ok_or_else(|| Error::User {
                            user: u.to_owned(),
                            message: "image user not found in the image's /etc/passwd".to_owned(),
                        })?;
                    (e.uid, e.gid, Some(e.name.clone()))
                }
            },
        }
    };
    let all_groups = groups(rootfs);
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => all_groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| Error::User {
                    user: g.to_owned(),
                    message: "image group not found in the image's /etc/group".to_owned(),
                })?,
        };
    }
    if let Some(g) = req.run_as_group {
        gid = g;
    }
    // The primary group is listed too, as containerd and Docker do: the process keeps it
    // even if a later setgid drops the primary group, and ContainerStatus.user says so.
    let mut additional_gids = vec![gid];
    if let Some(name) = name.as_ref().filter(|_| !req.strict_groups) {
        for g in all_groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            if !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    for g in req.supplemental_groups {
        if !additional_gids.contains(g) {
            additional_gids.push(*g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nvideo:x:44:www,other\naudio:x:29:www\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn image_user_by_name_with_memberships() {
        let d = rootfs();
        let u = resolve(
            d.path(),
            &UserRequest {
                image_user: "www",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (33, 33, vec![33, 44, 29])
        );
        let u = resolve(
            d.path(),
            &UserRequest {
                image_user: "1000:audio",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        assert!(
            resolve(
                d.path(),
                &UserRequest {
                    image_user: "nobody",
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn security_context_wins() {
        let d = rootfs();
        let req = UserRequest {
            image_user: "www",
            run_as_user: Some(0),
            run_as_group: Some(7),
            supplemental_groups: &[5],
            ..Default::default()
        };
        let u = resolve(d.path(), &req).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 7, vec![7, 5]));
        // Strict: the image's /etc/group memberships of www (44, 29) are not added.
        let req = UserRequest {
            image_user: "www",
            supplemental_groups: &[5],
            strict_groups: true,
            ..Default::default()
        };
        let www = resolve(d.path(), &req).unwrap();
        assert_eq!(www.additional_gids, vec![www.gid, 5]);
        let req = UserRequest {
            run_as_username: Some("www"),
            ..Default::default()
        };
        assert_eq!(resolve(d.path(), &req).unwrap().uid, 33);
        let req = UserRequest {
            run_as_group: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            resolve(d.path(), &req),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn passwd_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        assert!(
            resolve(
                d.path(),
                &UserRequest {
                    image_user: "root",
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
