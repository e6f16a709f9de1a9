use super::*;

#[test]
fn subordinate_ranges_by_name_or_uid() {
    let text = "alice:100000:65536\n# comment\n1001:200000:65536\nbob:300000:0\n";
    assert_eq!(sub_range(text, "alice", 1000), Some((100000, 65536)));
    assert_eq!(sub_range(text, "carol", 1001), Some((200000, 65536)));
    // A zero count is no range; an unknown user has none.
    assert_eq!(sub_range(text, "bob", 1002), None);
    assert_eq!(sub_range(text, "dave", 1003), None);
    assert_eq!(sub_range("alice:x:1\n", "alice", 1000), None);
}

#[test]
fn overlay_xattrs_are_never_layer_content() {
    assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
    assert!(is_overlay_xattr(b"user.overlay.opaque"));
    assert!(!is_overlay_xattr(b"user.mime_type"));
    assert!(!is_overlay_xattr(b"security.capability"));
}
