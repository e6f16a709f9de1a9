use super::*;

#[test]
fn flags_read_as_docker_reads_them() {
    assert_eq!(
        parse_volume_flag("/srv/www:/usr/share/nginx/html:ro").unwrap(),
        MountRequest::Bind {
            source: "/srv/www".into(),
            target: "/usr/share/nginx/html".into(),
            readonly: true,
            create: true
        }
    );
    assert_eq!(
        parse_volume_flag("redis-data:/data").unwrap(),
        MountRequest::Volume {
            name: Some("redis-data".into()),
            target: "/data".into(),
            readonly: false
        }
    );
    assert_eq!(
        parse_volume_flag("/cache/").unwrap(),
        MountRequest::Volume {
            name: None,
            target: "/cache".into(),
            readonly: false
        }
    );
    assert_eq!(
        parse_mount_flag("type=bind,src=/h,dst=/c,readonly").unwrap(),
        MountRequest::Bind {
            source: "/h".into(),
            target: "/c".into(),
            readonly: true,
            create: false
        }
    );
    assert_eq!(
        parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m").unwrap(),
        MountRequest::Tmpfs {
            target: "/t".into(),
            options: format!("mode=1777,size={}", 64 << 20)
        }
    );
    assert_eq!(
        parse_tmpfs_flag("/run:size=1m").unwrap(),
        MountRequest::Tmpfs {
            target: "/run".into(),
            options: "mode=1777,size=1m".into()
        }
    );
    for (bad, says) in [
        ("data", "not an absolute path"),
        (
            "./rel:/x",
            "neither an absolute host path nor a volume name",
        ),
        ("a:b:c:d", "invalid volume specification"),
        ("v:/x:rx", "invalid mode"),
        ("v:/", "cannot mount over /"),
    ] {
        let e = parse_volume_flag(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    for (bad, says) in [
        ("type=bind,target=/x", "source is required"),
        ("type=bind,source=rel,target=/x", "not an absolute path"),
        ("type=volume,source=/x", "target is required"),
        ("type=nfs,target=/x", "unsupported type"),
        ("type=tmpfs,source=x,target=/x", "takes no source"),
        ("type=volume,target=/x,colour=red", "unexpected key"),
    ] {
        let e = parse_mount_flag(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(valid_name("redis-data") && !valid_name("-x") && !valid_name("a"));
}
