//! The hot path (issue 3): shared-memory cache, coherence, the worker, a
//! streaming standby, crash safety. Real clusters, real client.

use std::process::Command;
use std::time::Duration;

use secret_vault_it::{db_error, eventually, stat, Cluster};

fn current(db: &mut postgres::Client, g: &str) -> (i32, Vec<u8>) {
    let row = db
        .query_one("SELECT version, key FROM vault.current($1)", &[&g])
        .unwrap_or_else(|e| panic!("vault.current({g}): {e:?}"));
    (row.get(0), row.get(1))
}

#[test]
fn more_groups_than_cache_slots_evicts_and_stays_correct() {
    let c = Cluster::start_with("evict", &["secret_vault.cache_groups = 2"]);
    let mut db = c.client();
    let mut expected = Vec::new();
    for i in 0..6 {
        let g = format!("evict/{i}");
        db.execute("SELECT vault.create_group($1)", &[&g]).unwrap();
        expected.push((g.clone(), current(&mut db, &g).1));
    }
    for _round in 0..3 {
        for (g, key) in &expected {
            assert_eq!(&current(&mut db, g).1, key, "{g}");
            let r: Vec<u8> = db.query_one("SELECT vault.resolve($1, 1)", &[g]).unwrap().get(0);
            assert_eq!(&r, key);
        }
    }
    assert!(stat(&mut db, "evictions") > 0, "cycling 6 groups through 2 slots must evict");
    assert!(stat(&mut db, "cached_groups") <= 2);
    assert_eq!(stat(&mut db, "cache_slots"), 2);
}

#[test]
fn rotation_commit_is_seen_at_once_open_is_invisible_rollback_never_visible() {
    let c = Cluster::start_with_extension("coherence");
    let mut a = c.client();
    let mut b = c.client();
    a.batch_execute("SELECT vault.create_group('co', propagation_delay => '0')").unwrap();
    // b warms the cache with version 1
    assert_eq!(current(&mut b, "co").0, 1);
    assert_eq!(current(&mut b, "co").0, 1);

    // 1. committed: visible to b at once
    a.batch_execute("SELECT vault.rotate('co')").unwrap();
    assert_eq!(current(&mut b, "co").0, 2);

    // 2. open transaction: invisible to b, visible to a itself
    let mut ta = a.transaction().unwrap();
    let v3: i32 = ta.query_one("SELECT vault.rotate('co')", &[]).unwrap().get(0);
    assert_eq!(v3, 3);
    assert_eq!(ta.query_one("SELECT version FROM vault.current('co')", &[]).unwrap().get::<_, i32>(0), 3);
    assert_eq!(current(&mut b, "co").0, 2);
    let err = b.query_one("SELECT vault.resolve('co', 3)", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "42704");
    ta.commit().unwrap();
    assert_eq!(current(&mut b, "co").0, 3);

    // 3. rolled back: never visible, and leaves no gap
    let mut ta = a.transaction().unwrap();
    let ghost: Vec<u8> = {
        ta.query_one("SELECT vault.rotate('co')", &[]).unwrap();
        ta.query_one("SELECT vault.resolve('co', 4)", &[]).unwrap().get(0)
    };
    ta.rollback().unwrap();
    assert_eq!(current(&mut b, "co").0, 3);
    assert_eq!(db_error(&b.query_one("SELECT vault.resolve('co', 4)", &[]).unwrap_err()).0, "42704");
    let v4: i32 = a.query_one("SELECT vault.rotate('co')", &[]).unwrap().get(0);
    assert_eq!(v4, 4);
    let (v, k4) = current(&mut b, "co");
    assert_eq!(v, 4);
    assert_ne!(k4, ghost, "a rolled-back key must never come back");

    // retire and drop are seen at once too
    b.query_one("SELECT vault.resolve('co', 1)", &[]).unwrap();
    a.batch_execute("SELECT vault.retire('co', 4)").unwrap();
    assert_eq!(db_error(&b.query_one("SELECT vault.resolve('co', 1)", &[]).unwrap_err()).0, "55000");
    a.batch_execute("SELECT vault.drop_group('co')").unwrap();
    assert_eq!(db_error(&b.query_one("SELECT version FROM vault.current('co')", &[]).unwrap_err()).0, "42704");
}

#[test]
fn pending_version_becomes_current_by_time_alone() {
    let c = Cluster::start_with_extension("pending");
    let mut db = c.client();
    db.batch_execute("SELECT vault.create_group('p', propagation_delay => '1 second')").unwrap();
    assert_eq!(current(&mut db, "p").0, 1);
    db.batch_execute("SELECT vault.rotate('p')").unwrap();
    assert_eq!(current(&mut db, "p").0, 1, "pending for a second");
    let hits_before = stat(&mut db, "cache_hits");
    assert!(eventually(Duration::from_secs(5), || current(&mut db, "p").0 == 2));
    assert!(stat(&mut db, "cache_hits") > hits_before, "the switch is served from the cache");
}

#[test]
fn worker_rotates_a_due_group_once_per_due_time() {
    let c = Cluster::start_with("worker", &["secret_vault.worker_interval = 100ms"]);
    let mut db = c.client();
    db.batch_execute(
        "SELECT vault.create_group('w/fast', rotation_interval => '1 second', propagation_delay => '0');
         SELECT vault.create_group('w/hourly', rotation_interval => '1 hour');",
    )
    .unwrap();
    // The fast group rotates on its own, versions consecutive.
    assert!(eventually(Duration::from_secs(10), || {
        db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'w/fast'", &[]).unwrap().get::<_, i32>(0) >= 3
    }));
    let (latest, stored): (i32, i64) = {
        let r = db
            .query_one(
                "SELECT g.latest_version, (SELECT count(*) FROM vault.group_versions v WHERE v.group_name = g.name)
                   FROM vault.groups g WHERE g.name = 'w/fast'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(latest as i64 <= stored, "no gaps");
    // Scheduled rotations are at least an interval apart.
    let min_gap: f64 = db
        .query_one(
            "SELECT min(gap)::float8 FROM (SELECT extract(epoch FROM r.created_at - lag(r.created_at) OVER (ORDER BY r.version)) AS gap
               FROM vault.ring_keys r JOIN vault.key_groups g ON g.id = r.group_id WHERE g.name = 'w/fast') s",
            &[],
        )
        .unwrap()
        .get::<_, Option<f64>>(0)
        .unwrap();
    assert!(min_gap >= 0.95, "two rotations {min_gap}s apart for a 1 s interval");

    // A group made due once is rotated exactly once, although the worker wakes ~30 times.
    db.batch_execute("UPDATE vault.key_groups SET next_rotation_at = now() - interval '1 second' WHERE name = 'w/hourly'")
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let v: i32 = db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'w/hourly'", &[]).unwrap().get(0);
    assert_eq!(v, 2);
    assert!(stat(&mut db, "rotations") >= 3);
    assert!(stat(&mut db, "worker_runs") > 10);
    assert_eq!(stat(&mut db, "worker_errors"), 0);

    // rotation = off stops it (a logical-replication subscriber's setting)
    c.conf("secret_vault.rotation = off");
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before: i32 = db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'w/fast'", &[]).unwrap().get(0);
    std::thread::sleep(Duration::from_millis(2500));
    let after: i32 = db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'w/fast'", &[]).unwrap().get(0);
    assert_eq!(before, after, "no rotation with secret_vault.rotation = off");
}

#[test]
fn streaming_standby_serves_the_primarys_keys_and_follows_rotation() {
    let primary = Cluster::start_with("primary", &["secret_vault.worker_interval = 100ms"]);
    let mut p = primary.client();
    p.batch_execute(
        "SELECT vault.create_group('ha/sign', propagation_delay => '0');
         SELECT vault.create_group('ha/col', 'encrypt');
         SELECT vault.create_group('ha/due', rotation_interval => '1 hour');
         CREATE TABLE t AS SELECT vault.encrypt('ha/col', 'replicated', 'ctx') AS ct;",
    )
    .unwrap();
    let standby = primary.standby(
        "standby",
        &["secret_vault.sync_interval = 200ms", "secret_vault.worker_interval = 100ms"],
    );
    let mut s = standby.client();
    assert!(s.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0));
    assert!(eventually(Duration::from_secs(10), || {
        s.query_opt("SELECT 1 FROM vault.groups WHERE name = 'ha/due'", &[]).unwrap().is_some()
    }));

    assert_eq!(current(&mut s, "ha/sign"), current(&mut p, "ha/sign"));
    let pt: Vec<u8> = s.query_one("SELECT vault.decrypt('ha/col', ct, 'ctx') FROM t", &[]).unwrap().get(0);
    assert_eq!(pt, b"replicated");

    // The standby's cache is warm (version 1); the primary rotates.
    for _ in 0..3 {
        current(&mut s, "ha/sign");
    }
    let v2: i32 = p.query_one("SELECT vault.rotate('ha/sign')", &[]).unwrap().get(0);
    let primary_key = current(&mut p, "ha/sign");
    assert_eq!(primary_key.0, v2);
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || current(&mut s, "ha/sign") == primary_key),
        "standby must follow the rotation within sync_interval"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "followed after {:?}", started.elapsed());

    // A due group on the standby is left to the primary: no write is attempted.
    p.batch_execute("UPDATE vault.key_groups SET next_rotation_at = now() - interval '1 second' WHERE name = 'ha/due'")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stat(&mut s, "worker_errors"), 0);
    assert!(stat(&mut s, "worker_runs") > 0);
    assert_eq!(stat(&mut s, "rotations"), 0, "the standby rotates nothing");
    let log = standby.log();
    assert!(!log.contains("read-only transaction"), "standby attempted a write:\n{log}");
    // The primary's worker did the scheduled rotation, and the standby sees it.
    assert!(eventually(Duration::from_secs(5), || {
        s.query_one("SELECT latest_version FROM vault.groups WHERE name = 'ha/due'", &[]).unwrap().get::<_, i32>(0) == 2
    }));
    // Writes on the standby fail cleanly.
    let err = s.query_one("SELECT vault.rotate('ha/sign')", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "25006");
}

#[test]
fn kill_9_of_a_backend_inside_rotate_leaves_a_consistent_ring() {
    let c = Cluster::start_with_extension("crash");
    let mut db = c.client();
    db.batch_execute(
        "SELECT vault.create_group('k', propagation_delay => '0');
         SELECT vault.create_group('kc', 'encrypt');
         CREATE TABLE t AS SELECT vault.encrypt('kc', 'survives') AS ct;",
    )
    .unwrap();
    // a holds the group's row lock; b enters rotate, wraps its key, and blocks claiming the version.
    let mut a = c.client();
    let mut ta = a.transaction().unwrap();
    ta.query_one("SELECT vault.rotate('k')", &[]).unwrap();
    let conninfo = c.conninfo("postgres");
    let b = std::thread::spawn(move || {
        let mut b = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        let _ = b.query_one("SELECT vault.rotate('k')", &[]);
    });
    let mut pid = None;
    assert!(eventually(Duration::from_secs(10), || {
        pid = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT vault.rotate(%' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .map(|r| r.get::<_, i32>(0));
        pid.is_some()
    }));
    Command::new("kill").args(["-9", &pid.unwrap().to_string()]).status().unwrap();
    let _ = b.join();
    drop(ta);
    drop(a);
    drop(db);

    // The postmaster reinitialises shared memory and recovers; then all is consistent.
    let mut db = None;
    assert!(eventually(Duration::from_secs(30), || {
        match postgres::Client::connect(&c.conninfo("postgres"), postgres::NoTls) {
            Ok(mut cl) => {
                let ok = cl.query_one("SELECT 1", &[]).is_ok();
                if ok {
                    db = Some(cl);
                }
                ok
            }
            Err(_) => false,
        }
    }));
    let mut db = db.unwrap();
    assert!(c.log().contains("terminated by signal 9"));
    let r = db
        .query_one(
            "SELECT g.last_version, count(r.*), max(r.version) FROM vault.key_groups g
               JOIN vault.ring_keys r ON r.group_id = g.id WHERE g.name = 'k' GROUP BY g.last_version",
            &[],
        )
        .unwrap();
    let (last, count, max): (i32, i64, i32) = (r.get(0), r.get(1), r.get(2));
    assert_eq!((last as i64, max), (count, last), "ring consistent after crash");
    assert_eq!(current(&mut db, "k").0, last);
    let next: i32 = db.query_one("SELECT vault.rotate('k')", &[]).unwrap().get(0);
    assert_eq!(next, last + 1);
    let pt: Vec<u8> = db.query_one("SELECT vault.decrypt('kc', ct) FROM t", &[]).unwrap().get(0);
    assert_eq!(pt, b"survives");
}

#[test]
fn ten_thousand_hot_path_calls_make_no_kms_call() {
    let c = Cluster::start_with_extension("nokms");
    let mut db = c.client();
    // Separate statements: a batch is one transaction, and a transaction that
    // created a group bypasses the cache for it.
    db.execute("SELECT vault.create_group('hot/sign')", &[]).unwrap();
    db.execute("SELECT vault.create_group('hot/col', 'encrypt')", &[]).unwrap();
    for _ in 0..2 {
        db.execute(
            "SELECT vault.current('hot/sign'), vault.resolve('hot/sign', 1), vault.decrypt('hot/col', vault.encrypt('hot/col', 'warm'))",
            &[],
        )
        .unwrap();
    }
    // A worker's first sync assumes everything changed and bumps the epoch
    // (coherence, not the hot path): let it happen before measuring.
    assert!(eventually(Duration::from_secs(20), || stat(&mut db, "worker_runs") >= 2), "worker running");
    let kms_before = stat(&mut db, "kms_calls");
    let hits_before = stat(&mut db, "cache_hits");
    let misses_before = stat(&mut db, "cache_misses");
    // Arguments depend on the row so every row calls the function.
    let n: i64 = db
        .query_one(
            // Aggregating every column keeps the planner from skipping any call.
            "SELECT count(*) FILTER (WHERE a = 1 AND length(b) = 32 AND c = int4send(i)) FROM (
               SELECT i, (vault.current(CASE WHEN i > 0 THEN 'hot/sign' END)).version AS a,
                      vault.resolve('hot/sign', 1 + i % 1) AS b,
                      vault.decrypt('hot/col', vault.encrypt('hot/col', int4send(i))) AS c
                 FROM generate_series(1, 2500) i) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2500);
    assert_eq!(stat(&mut db, "kms_calls"), kms_before, "the hot path must never reach the KMS");
    // A name is resolved again (from shared memory, never the KMS) after any
    // epoch bump or catalog invalidation, which the worker or autovacuum may
    // cause at any moment on a loaded machine: allow a few such misses.
    let hits = stat(&mut db, "cache_hits") - hits_before;
    let misses = stat(&mut db, "cache_misses") - misses_before;
    assert!(hits >= 9_990 && misses <= 10, "hot path served by the cache: {hits} hits, {misses} misses");
}

#[test]
fn a_parallel_scan_decrypts_from_the_cache_without_kms_calls() {
    let c = Cluster::start_with("parallel", &["max_worker_processes = 8", "max_parallel_workers_per_gather = 2"]);
    let mut db = c.client();
    db.execute("SELECT vault.create_group('par/col', 'encrypt')", &[]).unwrap();
    db.batch_execute(
        "CREATE TABLE par AS SELECT i, vault.encrypt('par/col', int4send(i)) AS ct FROM generate_series(1, 20000) i;
         ANALYZE par;",
    )
    .unwrap();
    db.query_one("SELECT vault.decrypt('par/col', ct) FROM par LIMIT 1", &[]).unwrap();
    let kms = stat(&mut db, "kms_calls");
    let setup = "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
                 SET min_parallel_table_scan_size = 0; SET parallel_leader_participation = off;";
    db.batch_execute(setup).unwrap();
    let plan: Vec<String> = db
        .query("EXPLAIN SELECT sum(length(vault.decrypt('par/col', ct))) FROM par", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Gather")), "{plan:?}");
    for _ in 0..2 {
        let n: i64 = db.query_one("SELECT sum(length(vault.decrypt('par/col', ct)))::bigint FROM par", &[]).unwrap().get(0);
        assert_eq!(n, 80_000);
    }
    // each parallel worker may load the group once; never once per row
    assert!(stat(&mut db, "kms_calls") - kms <= 8, "parallel workers reached the KMS per row");
}

#[test]
fn key_cache_is_excluded_from_core_dumps() {
    let c = Cluster::start_with_extension("dontdump");
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", c.postmaster_pid())).unwrap();
    let flags: Vec<&str> = smaps.lines().filter(|l| l.starts_with("VmFlags:")).collect();
    assert!(
        flags.iter().any(|f| f.contains(" dd") && f.contains(" sh")),
        "a shared mapping marked do-not-dump must exist"
    );
    let locked = flags.iter().any(|f| f.contains(" dd") && f.contains(" lo"));
    assert!(locked || c.log().contains("could not lock the key cache"), "either locked or logged");
}

#[test]
fn worker_killed_with_sigkill_is_restarted_and_keeps_rotating() {
    let c = Cluster::start_with("worker-crash", &["secret_vault.worker_interval = 100ms"]);
    let mut db = c.client();
    let pid_of = |db: &mut postgres::Client| -> Option<i64> {
        db.query_one("SELECT worker_pid::bigint FROM vault.stats()", &[]).ok().and_then(|r| r.get(0))
    };
    assert!(eventually(Duration::from_secs(10), || pid_of(&mut db).is_some()));
    let old = pid_of(&mut db).unwrap();
    Command::new("kill").args(["-9", &old.to_string()]).status().unwrap();
    drop(db);
    // A crashed worker makes the postmaster reset shared memory and restart it.
    let mut db = None;
    assert!(eventually(Duration::from_secs(60), || {
        match postgres::Client::connect(&c.conninfo("postgres"), postgres::NoTls) {
            Ok(mut cl) => {
                let new = pid_of(&mut cl);
                let ok = new.is_some() && new != Some(old);
                if ok {
                    db = Some(cl);
                }
                ok
            }
            Err(_) => false,
        }
    }));
    let mut db = db.unwrap();
    db.batch_execute("SELECT vault.create_group('after/crash', rotation_interval => '1 second')").unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'after/crash'", &[]).unwrap().get::<_, i32>(0)
            >= 2
    }));
}

#[test]
fn a_cold_start_unwraps_one_key_per_group_and_older_versions_once_each() {
    let mut c = Cluster::start_with("lazy", &["secret_vault.cache_versions = 4"]);
    let mut db = c.client();
    // 100 groups of 6 versions: the window (4) holds versions 3..6.
    db.batch_execute(
        "SELECT vault.create_group('lazy/' || i, propagation_delay => '0') FROM generate_series(1, 100) i;
         SELECT vault.rotate('lazy/' || i) FROM generate_series(1, 100) i, generate_series(1, 5) r;",
    )
    .unwrap();
    c.restart();
    let mut db = c.client();
    // The worker warms every group: one KMS call each, for the current key;
    // plus its one look at the KMS key's current material (re-wrap).
    assert!(eventually(Duration::from_secs(30), || stat(&mut db, "cached_groups") == 100), "warmed");
    assert!(eventually(Duration::from_secs(10), || stat(&mut db, "worker_runs") >= 2));
    assert_eq!(stat(&mut db, "kms_calls"), 101, "one unwrap per group, not one per cached version");
    assert_eq!(stat(&mut db, "kms_calls_local"), 101);
    let current: i32 = db.query_one("SELECT (vault.current('lazy/7')).version", &[]).unwrap().get(0);
    assert_eq!(current, 6);
    assert_eq!(stat(&mut db, "kms_calls"), 101, "current was warm");
    // A version inside the window: one unwrap, then cached for everyone.
    let a: Vec<u8> = db.query_one("SELECT vault.resolve('lazy/7', 4)", &[]).unwrap().get(0);
    assert_eq!(stat(&mut db, "kms_calls"), 102);
    let b: Vec<u8> = c.client().query_one("SELECT vault.resolve('lazy/7', 4)", &[]).unwrap().get(0);
    assert_eq!((a, stat(&mut db, "kms_calls")), (b, 102));
    // Older than the window: one unwrap per backend, not one per call.
    for _ in 0..20 {
        db.query_one("SELECT vault.resolve('lazy/7', 1)", &[]).unwrap();
    }
    assert_eq!(stat(&mut db, "kms_calls"), 103);
    // Retiring it is seen at once, though its key was cached in the backend.
    db.execute("SELECT vault.retire('lazy/7', 2)", &[]).unwrap();
    let e = db.query_one("SELECT vault.resolve('lazy/7', 1)", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "55000", "{:?}", db_error(&e));
}
