//! Microbenchmarks: the packet codec, the auth math, one policy call, and
//! the built-in statement classification.
//! `cargo bench -p switchyard` (the policy benchmark needs the default
//! policy built: `cargo build --release -p default-policy --target
//! wasm32-wasip2`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard::auth::{PasswordHash, Sha1Password, generate_nonce, verify_native};
use switchyard::config::Config;
use switchyard::policy::Policy;
use switchyard::pool::Pools;
use switchyard::protocol::{
    CapabilityFlags, CommandScanner, Greeting, HandshakeResponse, MariaDbCapabilities, PacketCodec,
    StatusFlags, encode_packet,
};

fn codec(c: &mut Criterion) {
    let response = HandshakeResponse {
        capabilities: CapabilityFlags::implemented(),
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities::implemented(),
        username: "mysqlslave".into(),
        auth_response: vec![7; 20],
        database: Some("app".into()),
        auth_plugin: Some("mysql_native_password".into()),
        connect_attrs: Some(
            b"\x0c_client_name\x0alibmariadb\x0f_client_version\x063.3.10".to_vec(),
        ),
    }
    .encode();
    c.bench_function("decode HandshakeResponse41", |b| {
        b.iter(|| HandshakeResponse::decode(black_box(&response)).unwrap())
    });
    let greeting = Greeting {
        server_version: "5.5.5-10.11.19-MariaDB-0+deb12u1-log".into(),
        connection_id: 7,
        auth_data: generate_nonce().to_vec(),
        capabilities: CapabilityFlags::implemented(),
        charset: 45,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        mariadb_capabilities: MariaDbCapabilities::implemented(),
        auth_plugin: "mysql_native_password".into(),
    };
    c.bench_function("encode greeting", |b| {
        b.iter(|| black_box(&greeting).encode())
    });
    let mut frame = BytesMut::new();
    encode_packet(1, &response, &mut frame);
    let codec = PacketCodec::new(16 * 1024);
    c.bench_function("frame one login packet", |b| {
        b.iter(|| {
            let mut buf = frame.clone();
            codec.decode(&mut buf).unwrap().unwrap()
        })
    });
    // The relay's per-read work: walking headers of pipelined queries.
    let mut stream = BytesMut::new();
    while stream.len() < 1 << 20 {
        encode_packet(0, b"\x03SELECT c FROM sbtest1 WHERE id=4242", &mut stream);
    }
    let mut group = c.benchmark_group("scan client stream");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("1 MiB of small queries", |b| {
        b.iter(|| CommandScanner::new().scan(black_box(&stream)))
    });
    group.finish();
}

/// The built-in rule's per-statement work (issue 15's target: at most
/// 1 µs a statement): a point select, a write, a SET, and a long read.
fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify statement");
    for (name, sql) in [
        ("point select", "SELECT c FROM sbtest1 WHERE id=4242"),
        ("insert", "INSERT INTO t (a, b) VALUES (1, 'x')"),
        ("set names", "SET NAMES utf8mb4 COLLATE utf8mb4_general_ci"),
        (
            "join with functions",
            "SELECT o.id, COUNT(*), MAX(l.price), DATE_FORMAT(o.created, '%Y-%m') \
             FROM orders o JOIN lines l ON l.order_id = o.id /* report */ \
             WHERE o.customer = 42 AND o.created > NOW() - INTERVAL 30 DAY \
             GROUP BY o.id ORDER BY o.created DESC LIMIT 20",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| switchyard::sql::classify(black_box(sql.as_bytes())))
        });
    }
    group.finish();
    // What a split session does per statement before sending it: classify
    // it and apply the built-in rule.
    let mut group = c.benchmark_group("built-in statement rule");
    let session = switchyard::sql::SessionView::default();
    for (name, sql) in [
        ("point select", "SELECT c FROM sbtest1 WHERE id=4242"),
        ("insert", "INSERT INTO t (a, b) VALUES (1, 'x')"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let class = switchyard::sql::classify(black_box(sql.as_bytes()));
                switchyard::sql::rule(&class, black_box(&session)).0
            })
        });
    }
    group.finish();
}

fn auth(c: &mut Criterion) {
    let stored = PasswordHash::of_password(b"slavepass");
    let nonce = generate_nonce();
    let token = Sha1Password::of_password(b"slavepass").scramble(&nonce);
    c.bench_function("verify mysql_native_password", |b| {
        b.iter(|| verify_native(&stored, black_box(&nonce), black_box(&token)).unwrap())
    });
    let h1 = Sha1Password::of_password(b"slavepass");
    c.bench_function("scramble for a backend nonce", |b| {
        b.iter(|| h1.scramble(black_box(&nonce)))
    });
    c.bench_function("generate nonce", |b| b.iter(generate_nonce));
}

fn policy(c: &mut Criterion) {
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/default_policy.wasm");
    assert!(
        module.exists(),
        "build the default policy first: cargo build --release -p default-policy --target wasm32-wasip2"
    );
    let text = format!(
        "[pools.replicas]\nbackends = [\"127.0.0.1:3307\"]\n[policy]\nmodule = \"{}\"\n\
         [policy.settings]\n\"user.mysqlslave\" = \"replicas\"\n",
        module.display()
    );
    let config = Config::parse(&text, "bench.toml".as_ref()).unwrap();
    let pools = Arc::new(Pools::from_config(
        &config,
        &switchyard::pool::Registry::default(),
    ));
    let policy = Policy::load(&config.policy, pools).unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let client = client.to_string();
    c.bench_function("policy route (fresh instance, default policy)", |b| {
        b.iter(|| {
            policy
                .route_blocking("mysqlslave", Some("app"), &client)
                .unwrap()
        })
    });
    // The way a login calls it: `Policy::route` on a worker's event loop
    // (a current-thread runtime), where a light policy's call runs inline.
    let event_loop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = Arc::new(policy);
    c.bench_function(
        "policy route on an event loop (fresh instance, default policy)",
        |b| {
            b.iter(|| {
                event_loop
                    .block_on(policy.route("mysqlslave", Some("app"), &client))
                    .unwrap()
            })
        },
    );
    let mut reuse = config.policy.clone();
    reuse.instances = switchyard::config::Instances::Reuse;
    let pools = Arc::new(Pools::from_config(
        &config,
        &switchyard::pool::Registry::default(),
    ));
    let reused = Policy::load(&reuse, pools).unwrap();
    c.bench_function("policy route (reused instance, default policy)", |b| {
        b.iter(|| {
            reused
                .route_blocking("mysqlslave", Some("app"), &client)
                .unwrap()
        })
    });
    let reused = Arc::new(reused);
    c.bench_function(
        "policy route on an event loop (reused instance, default policy)",
        |b| {
            b.iter(|| {
                event_loop
                    .block_on(reused.route("mysqlslave", Some("app"), &client))
                    .unwrap()
            })
        },
    );
    // The example policies in other languages, when `scripts/test.sh` has
    // built them: one `route` per login, as `instances = "auto"` runs them.
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/examples");
    for lang in ["c", "zig", "go", "python", "js"] {
        let module = examples.join(format!("{lang}_policy.wasm"));
        if !module.exists() {
            eprintln!(
                "skipping the {lang} policy: {} is not built",
                module.display()
            );
            continue;
        }
        let mut config = config.policy.clone();
        config.module = toml::Spanned::new(0..0, module);
        config.memory_limit_mib = 64;
        config.timeout_ms = 1000;
        let pools = Arc::new(Pools::from_config(
            &Config::parse(&text, "bench.toml".as_ref()).unwrap(),
            &switchyard::pool::Registry::default(),
        ));
        let policy = Policy::load(&config, pools).unwrap();
        let how = if policy.reuses_instances() {
            "reused instances"
        } else {
            "fresh instances"
        };
        c.bench_function(&format!("policy route ({lang} example, {how})"), |b| {
            b.iter(|| {
                policy
                    .route_blocking("mysqlslave", Some("app"), &client)
                    .unwrap()
            })
        });
    }
}

/// A split session's per-statement hook call (`policies/hint`, a kept
/// instance), and its latency percentiles over 100,000 calls.
fn statement_hook(c: &mut Criterion) {
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/hint_policy.wasm");
    if !module.exists() {
        eprintln!(
            "skipping the statement hook: {} is not built",
            module.display()
        );
        return;
    }
    let text = format!(
        "[pools.replicas]\nbackends = [\"127.0.0.1:3307\"]\n[policy]\nmodule = \"{}\"\n\
         [policy.settings]\nwriter_tables = \"accounts, ledger\"\n",
        module.display()
    );
    let config = Config::parse(&text, "bench.toml".as_ref()).unwrap();
    let pools = Arc::new(Pools::from_config(
        &config,
        &switchyard::pool::Registry::default(),
    ));
    let policy = Policy::load(&config.policy, pools).unwrap();
    let sql = "SELECT c FROM sbtest1 WHERE id=4242";
    let info = switchyard::policy::StatementInfo {
        kind: switchyard::sql::Kind::Read,
        in_transaction: false,
        read_only_transaction: false,
        digest: switchyard::sql::digest(sql.as_bytes()),
        text: sql,
        user: "app",
        db: Some("app"),
        unseen_writes: false,
    };
    c.bench_function("route-statement (hint policy, kept instance)", |b| {
        b.iter(|| policy.route_statement(black_box(&info)).is_ok())
    });
    let mut failed = 0;
    let mut took: Vec<std::time::Duration> = (0..100_000)
        .map(|_| {
            let started = std::time::Instant::now();
            failed += usize::from(black_box(policy.route_statement(&info)).is_err());
            started.elapsed()
        })
        .collect();
    took.sort();
    let at = |p: usize| took[took.len() * p / 100];
    eprintln!(
        "route-statement over 100,000 calls: p50 {:?}, p99 {:?}, max {:?}, {failed} failed",
        at(50),
        at(99),
        took[took.len() - 1]
    );
}

criterion_group!(benches, codec, classify, auth, policy, statement_hook);
criterion_main!(benches);
