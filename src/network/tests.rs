use super::*;

fn rec(name: &str, subnet: &str, dns: bool) -> NetworkRecord {
    let (a, _) = kiln_store::networks::parse_cidr(subnet).unwrap();
    NetworkRecord {
        id: "ab".repeat(32),
        name: name.into(),
        subnet: subnet.into(),
        gateway: Ipv4Addr::from(u32::from(a) + 1),
        bridge: "kiln-abababab".into(),
        internal: false,
        dns,
        labels: "{}".into(),
        created: 0,
    }
}

fn ep(n: NetworkRecord, ip: &str) -> Endpoint {
    Endpoint {
        network: n,
        ip: ip.parse().unwrap(),
        aliases: vec!["db".into()],
        interface: "eth0".into(),
    }
}

#[test]
fn host_routes_and_resolvers_are_read_as_subnets() {
    let routes =
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    let got = subnet::host_nets(routes, "nameserver 10.255.255.53\nnameserver ::1\n");
    assert_eq!(
        got,
        vec![
            (Ipv4Addr::new(192, 0, 2, 0), 24),
            (Ipv4Addr::new(10, 255, 255, 53), 32)
        ]
    );
    assert!(subnet::overlap(
        (Ipv4Addr::new(172, 17, 0, 0), 16),
        (Ipv4Addr::new(172, 17, 3, 0), 24)
    ));
    assert!(!subnet::overlap(
        (Ipv4Addr::new(172, 17, 0, 0), 16),
        (Ipv4Addr::new(172, 18, 0, 0), 16)
    ));
}

#[test]
fn resolv_conf_follows_dockers_rules() {
    let host = "search example.org\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n";
    let user = ep(rec("app", "172.18.0.0/16", true), "172.18.0.2");
    let dflt = ep(rec("bridge", "172.17.0.0/16", false), "172.17.0.2");
    // A user network: aardvark-dns on its gateway.
    assert_eq!(
        resolv_conf(std::slice::from_ref(&user), &[], host),
        "nameserver 172.18.0.1\nsearch example.org\n"
    );
    // The default network: the host's, without loopback resolvers; --dns replaces them.
    assert_eq!(
        resolv_conf(std::slice::from_ref(&dflt), &[], host),
        "nameserver 10.255.255.53\nsearch example.org\n"
    );
    assert_eq!(
        resolv_conf(&[dflt], &["9.9.9.9".into()], host),
        "nameserver 9.9.9.9\nsearch example.org\n"
    );
    assert_eq!(
        resolv_conf(&[], &[], "nameserver 127.0.0.53\n"),
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    );
}

#[test]
fn add_host_takes_an_address_or_the_gateway() {
    let user = ep(rec("app", "172.18.0.0/16", true), "172.18.0.2");
    assert_eq!(add_host_line("db:10.0.0.5", &[]).unwrap(), "10.0.0.5\tdb\n");
    assert_eq!(
        add_host_line("host.docker.internal:host-gateway", &[user]).unwrap(),
        "172.18.0.1\thost.docker.internal\n"
    );
    assert!(add_host_line("x:host-gateway", &[]).is_err());
    assert!(add_host_line("nocolon", &[]).is_err());
    assert!(add_host_line("x:notanip", &[]).is_err());
}

#[test]
fn netavark_options_name_every_endpoint() {
    let user = ep(rec("app", "172.18.0.0/16", true), "172.18.0.2");
    let id = "c".repeat(64);
    // netavark knows a network by its bridge's name, unique on the machine.
    let b = user.network.bridge.clone();
    let b = b.as_str();
    let v = netavark::options(&id, "web", &[user], &["9.9.9.9".into()]);
    assert_eq!(v["network_info"][b]["name"], b);
    assert_eq!(v["container_name"], "web");
    assert_eq!(v["networks"][b]["static_ips"][0], "172.18.0.2");
    assert_eq!(v["networks"][b]["interface_name"], "eth0");
    assert_eq!(v["networks"][b]["aliases"][0], "db");
    assert_eq!(v["networks"][b]["aliases"][1], "cccccccccccc");
    assert_eq!(v["network_info"][b]["subnets"][0]["gateway"], "172.18.0.1");
    assert_eq!(v["network_info"][b]["dns_enabled"], true);
    assert_eq!(v["dns_servers"][0], "9.9.9.9");
}
