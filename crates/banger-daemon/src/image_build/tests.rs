//! The build registry on the fake VMM: what is refused before anything
//! changes, and what a failed, cancelled or interrupted build leaves (nothing).
//! The provisioning steps need a real guest: the e2e suite builds an image.

use std::sync::Arc;
use std::time::Duration;

use banger_host::process::HostRunner;
use banger_proto::{BuildImageParams, BuildState, CreateVmParams, StepState};

use super::*;
use crate::lifecycle::tests::{Fixture, fixture};

fn builds(fx: &Fixture, config: Config) -> Arc<ImageBuilds> {
    let bundle = fx.paths.home.join("bundle");
    std::fs::write(bundle.join("banger-vsock-pingd"), "#!/bin/sh\n").unwrap();
    let mut builds = ImageBuilds::new(
        fx.lifecycle.clone(),
        fx.disks.clone(),
        Arc::new(HostRunner),
        fx.paths.clone(),
        config,
        Some(bundle),
    );
    builds.boot_timeout = Duration::from_secs(1);
    Arc::new(builds)
}

fn params(name: &str) -> BuildImageParams {
    BuildImageParams {
        name: name.into(),
        packages: Some(vec!["git".into()]),
        ..Default::default()
    }
}

fn wait(builds: &ImageBuilds, name: &str) -> ImageBuild {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = builds.status(name).unwrap();
        if status.state != BuildState::Running {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the build never ended: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local file for every pinned source, none of them what its pin says.
fn local_sources(fx: &Fixture) -> Config {
    let dir = fx.paths.home.join("sources");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::default();
    for source in image_sources::ALL {
        let path = dir.join(format!("{}.tar", source.key));
        std::fs::write(&path, "not the pinned tar").unwrap();
        config.image_sources.insert(
            source.key.into(),
            banger_host::config::SourceOverride {
                place: path.to_string_lossy().into_owned(),
                sha256: None,
            },
        );
    }
    config
}

fn leftovers(fx: &Fixture) -> (Vec<String>, bool, bool) {
    let vms = fx
        .store
        .list_vms()
        .unwrap()
        .into_iter()
        .map(|vm| vm.name.to_string())
        .collect();
    let staging = std::fs::read_dir(&fx.paths.images_dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with('.'))
        })
        .unwrap_or(false);
    let image = fx.store.get_image("dev").unwrap().is_some();
    (vms, staging, image)
}

#[test]
fn bad_requests_are_refused_before_anything_changes() {
    let fx = fixture();
    let builds = builds(&fx, Config::default());
    let base = fx.store.get_image("default").unwrap().unwrap().rootfs;
    std::fs::File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    for (request, says) in [
        (params("Bad_Name"), "invalid image name \"Bad_Name\""),
        (
            params("default"),
            "the default image is registered from the runtime bundle",
        ),
        (
            BuildImageParams {
                base: Some("/no/such.ext4".into()),
                ..params("dev")
            },
            "base \"/no/such.ext4\" is neither an image",
        ),
        (
            BuildImageParams {
                packages: Some(vec!["git".into(), "rm -rf /".into()]),
                ..params("dev")
            },
            "invalid package name \"rm -rf /\"",
        ),
        (
            BuildImageParams {
                size: Some("2M".into()),
                ..params("dev")
            },
            "--size 2M is smaller than the base (3M): use at least 3M",
        ),
    ] {
        let err = builds.start(request).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    let unknown = Config {
        image_sources: [(
            "nodejs".to_owned(),
            banger_host::config::SourceOverride {
                place: "/x".into(),
                sha256: None,
            },
        )]
        .into(),
        ..Config::default()
    };
    let err = self::builds(&fx, unknown)
        .start(params("dev"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown image_sources key \"nodejs\""),
        "{err}"
    );
    assert_eq!(leftovers(&fx), (vec![], false, false));
}

#[test]
fn a_rebuild_leaves_the_vms_of_the_old_build_on_it() {
    let fx = fixture();
    let default = fx.store.get_image("default").unwrap().unwrap();
    let stage = |content: &str| {
        let staged = fx.paths.images_dir.join(".build-dev");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("rootfs.ext4"), content).unwrap();
        staged
    };
    let built = |created_at| Image {
        name: "dev".into(),
        managed: true,
        created_at,
        ..default.clone()
    };
    fx.lifecycle
        .register_built_image(built(100), &stage("first"))
        .unwrap();
    let user = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("user".into()),
            image: Some("dev".into()),
            ..Default::default()
        })
        .unwrap();
    let second = fx
        .lifecycle
        .register_built_image(built(200), &stage("second"))
        .unwrap();
    assert_eq!(std::fs::read_to_string(&second.rootfs).unwrap(), "second");
    let kept = fx
        .store
        .get_image("dev-100")
        .unwrap()
        .expect("the first build stays");
    assert_eq!(std::fs::read_to_string(&kept.rootfs).unwrap(), "first");
    assert_eq!(fx.store.get_vm(&user.id).unwrap().unwrap().image, "dev-100");
    assert!(fx.lifecycle.image_users("dev").unwrap().is_empty());
    // Unused, a build is replaced outright.
    fx.lifecycle
        .register_built_image(built(300), &stage("third"))
        .unwrap();
    assert!(fx.store.get_image("dev-200").unwrap().is_none());
    let names: Vec<String> = std::fs::read_dir(&fx.paths.images_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["dev", "dev-100"], "no staging or old files left");
}

#[test]
fn the_base_falls_back_to_rootfs_docker_when_the_bundle_has_no_rootfs() {
    let fx = fixture();
    let bundle = fx.paths.home.join("bundle");
    let builds = builds(&fx, Config::default());
    assert_eq!(builds.default_base(), Some(bundle.join("rootfs.ext4")));
    std::fs::rename(
        bundle.join("rootfs.ext4"),
        bundle.join("rootfs-docker.ext4"),
    )
    .unwrap();
    assert_eq!(
        builds.default_base(),
        Some(bundle.join("rootfs-docker.ext4"))
    );
    let configured = Config {
        default_base_rootfs: Some("/srv/base.ext4".into()),
        ..Config::default()
    };
    assert_eq!(
        self::builds(&fx, configured).default_base(),
        Some("/srv/base.ext4".into())
    );
}

#[test]
fn a_checksum_mismatch_stops_the_build_naming_the_file_and_both_hashes() {
    let fx = fixture();
    let config = local_sources(&fx);
    let builds = builds(&fx, config.clone());
    builds.start(params("dev")).unwrap();
    let status = wait(&builds, "dev");
    assert_eq!(status.state, BuildState::Failed);
    assert_eq!(status.steps[Step::Prepare.index()].state, StepState::Failed);
    let error = status.error.unwrap();
    let mise = &config.image_sources["mise"].place;
    let found = image_sources::tar_sha256(Path::new(mise)).unwrap();
    assert!(
        error.contains(&format!(
            "checksum mismatch for mise {} from {mise}",
            image_sources::MISE.version,
        )) && error.contains(image_sources::MISE.tar_sha256)
            && error.contains(&found),
        "{error}"
    );
    assert!(
        status.log_tail.iter().any(|l| l.contains("build failed")),
        "{:?}",
        status.log_tail
    );
    assert_eq!(leftovers(&fx), (vec![], false, false));
}

/// A tar for every pinned source, made here, and config.toml entries
/// pinning them: the build gets past its downloads without the internet.
fn pinned_locally(fx: &Fixture, builds: &mut ImageBuilds) {
    let dir = fx.paths.home.join("sources");
    std::fs::create_dir_all(dir.join("package/bin")).unwrap();
    std::fs::write(dir.join("package/bin/tool"), "#!/bin/sh\n").unwrap();
    for source in image_sources::ALL {
        let tar = dir.join(format!("{}.tar", source.key));
        let made = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .arg("package")
            .status()
            .unwrap();
        assert!(made.success());
        builds.config.image_sources.insert(
            source.key.into(),
            banger_host::config::SourceOverride {
                place: tar.to_string_lossy().into_owned(),
                sha256: Some(image_sources::tar_sha256(&tar).unwrap()),
            },
        );
    }
}

fn builds_past_prepare(fx: &Fixture, boot_timeout: Duration) -> Arc<ImageBuilds> {
    let mut builds = Arc::into_inner(builds(fx, Config::default())).unwrap();
    pinned_locally(fx, &mut builds);
    builds.boot_timeout = boot_timeout;
    Arc::new(builds)
}

#[test]
fn a_builder_that_never_answers_fails_the_boot_and_leaves_nothing() {
    let fx = fixture();
    // The fake VMM runs no guest, so the builder's agent never answers.
    let builds = builds_past_prepare(&fx, Duration::from_secs(1));
    builds.start(params("dev")).unwrap();
    let status = wait(&builds, "dev");
    assert_eq!(status.state, BuildState::Failed, "{status:?}");
    assert_eq!(status.steps[Step::Prepare.index()].state, StepState::Done);
    assert_eq!(status.steps[Step::Boot.index()].state, StepState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("did not answer within 1s") && error.contains("build-dev"),
        "{error}"
    );
    assert_eq!(leftovers(&fx), (vec![], false, false));
}

#[test]
fn a_cancelled_build_ends_cancelled_and_leaves_nothing() {
    let fx = fixture();
    let builds = builds_past_prepare(&fx, Duration::from_secs(60));
    builds.start(params("dev")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while builds.status("dev").unwrap().steps[Step::Boot.index()].state != StepState::Running {
        assert!(Instant::now() < deadline, "the boot step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    builds.cancel("dev").unwrap();
    let status = wait(&builds, "dev");
    assert_eq!(status.state, BuildState::Cancelled, "{status:?}");
    assert_eq!(leftovers(&fx), (vec![], false, false));
}

#[test]
fn a_daemon_start_removes_what_an_interrupted_build_left() {
    let fx = fixture();
    let builder = fx
        .lifecycle
        .create_with(
            &CreateVmParams {
                name: Some("build-dev".into()),
                ..Default::default()
            },
            |dir| {
                std::fs::write(banger_host::VmDir::new(dir).build_target(), "half built").unwrap();
                Ok(())
            },
        )
        .unwrap();
    let user = fx.lifecycle.create(&CreateVmParams::default()).unwrap();
    std::fs::create_dir_all(fx.paths.images_dir.join(".build-dev")).unwrap();
    builds(&fx, Config::default()).recover();
    assert!(
        fx.store.get_vm(&builder.id).unwrap().is_none(),
        "the builder went"
    );
    assert!(
        fx.store.get_vm(&user.id).unwrap().is_some(),
        "other VMs stay"
    );
    assert!(!fx.paths.images_dir.join(".build-dev").exists());
}

#[test]
fn package_names_are_debian_names() {
    for good in ["git", "g++", "libc6-dev", "tmux=3.3a-3", "python3.11"] {
        assert!(valid_package(good), "{good}");
    }
    for bad in ["", "a", "Git", "-rf", "git;ls", "tmux=", "a b"] {
        assert!(!valid_package(bad), "{bad}");
    }
}
