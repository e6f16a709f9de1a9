use super::*;

#[test]
fn bounded_keeps_order_and_never_exceeds_its_workers() {
    let running = std::sync::atomic::AtomicUsize::new(0);
    let most = std::sync::atomic::AtomicUsize::new(0);
    let items: Vec<u32> = (0..40).collect();
    let out = bounded(&items, 3, |n| {
        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if *n == 7 {
            Err(RegistryError::Invalid("seven".into()))
        } else {
            Ok(n * 2)
        }
    });
    assert_eq!(out.len(), 40);
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u32 * 2),
            Err(e) => assert_eq!((i, e.to_string().contains("seven")), (7, true)),
        }
    }
    assert!(bounded(&Vec::<u32>::new(), 3, |_| Ok(())).is_empty());
}
