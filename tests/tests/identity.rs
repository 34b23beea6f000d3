//! Identity and isolation (issue 7): several databases of one cluster, the
//! extension dropped and created again, databases dropped and created again,
//! dumps restored next to their source, hostile installs, domain separation,
//! PREPARE, concurrent drop/create, and a standby's long-lived sessions.
//! Real clusters, real clients; restarts before the assertions that matter.

use std::time::Duration;

use secret_vault_it::{db_error, eventually, Client, Cluster};

fn current(db: &mut Client, g: &str) -> (i32, Vec<u8>) {
    let row = db
        .query_one("SELECT version, key FROM vault.current($1)", &[&g])
        .unwrap_or_else(|e| panic!("vault.current({g}): {e:?}"));
    (row.get(0), row.get(1))
}

fn code(db: &mut Client, sql: &str) -> String {
    db_error(&db.batch_execute(sql).expect_err(sql)).0
}

fn read(db: &mut Client, name: &str) -> String {
    db.query_one("SELECT vault.read_secret($1)", &[&name]).unwrap().get(0)
}

fn with_databases(name: &str, conf: &[&str], dbs: &[&str]) -> Cluster {
    let c = Cluster::start_with(name, conf);
    let mut admin = c.client();
    for db in dbs {
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        c.client_db(db).batch_execute("CREATE EXTENSION secret_vault").unwrap();
    }
    c
}

#[test]
fn two_databases_with_the_same_names_get_their_own_keys_and_secrets_and_workers() {
    let mut c = with_databases("two-dbs", &["secret_vault.worker_interval = 100ms"], &["db_a", "db_b"]);
    let mut a = c.client_db("db_a");
    let mut b = c.client_db("db_b");
    for db in [&mut a, &mut b] {
        db.execute("SELECT vault.create_group('shared/name', propagation_delay => '0')", &[]).unwrap();
        db.execute("SELECT vault.create_group('shared/col', 'encrypt')", &[]).unwrap();
    }
    let ka = current(&mut a, "shared/name");
    let kb = current(&mut b, "shared/name");
    assert_ne!(ka.1, kb.1, "the same group name in two databases must be two keys");
    // warm both, then check again: the cache must not cross databases
    for _ in 0..3 {
        assert_eq!(current(&mut a, "shared/name"), ka);
        assert_eq!(current(&mut b, "shared/name"), kb);
    }

    // a database without the group gets an error, never the other's key
    a.execute("SELECT vault.create_group('only/in/a')", &[]).unwrap();
    current(&mut a, "only/in/a");
    assert_eq!(db_error(&b.query_one("SELECT * FROM vault.current('only/in/a')", &[]).unwrap_err()).0, "42704");

    // secrets with the same name, sealed under each database's default group
    a.execute("SELECT vault.create_secret('svc/pw', 'value-in-a')", &[]).unwrap();
    b.execute("SELECT vault.create_secret('svc/pw', 'value-in-b')", &[]).unwrap();
    assert_eq!(read(&mut a, "svc/pw"), "value-in-a");
    assert_eq!(read(&mut b, "svc/pw"), "value-in-b");
    let cta: Vec<u8> = a.query_one("SELECT vault.encrypt('shared/col', 'from a', 'ctx')", &[]).unwrap().get(0);
    let ctb: Vec<u8> = b.query_one("SELECT vault.encrypt('shared/col', 'from b', 'ctx')", &[]).unwrap().get(0);
    a.execute("CREATE TABLE t (ct bytea)", &[]).unwrap();
    a.execute("INSERT INTO t VALUES ($1)", &[&cta]).unwrap();
    b.execute("CREATE TABLE t (ct bytea)", &[]).unwrap();
    b.execute("INSERT INTO t VALUES ($1)", &[&ctb]).unwrap();
    // b's ciphertext does not open in a: another group (another UUID)
    let cross = a.query_one("SELECT vault.decrypt('shared/col', $1, 'ctx')", &[&ctb]).unwrap_err();
    assert_eq!(db_error(&cross).0, "22000");

    // the worker rotates in both databases
    for db in [&mut a, &mut b] {
        db.execute("SELECT vault.create_group('w/fast', rotation_interval => '1 second', propagation_delay => '0')", &[])
            .unwrap();
    }
    for db in [&mut a, &mut b] {
        assert!(eventually(Duration::from_secs(15), || {
            db.query_one("SELECT latest_version FROM vault.groups WHERE name = 'w/fast'", &[]).unwrap().get::<_, i32>(0)
                >= 3
        }));
        let (pid, errors): (Option<i32>, i64) = {
            let r = db.query_one("SELECT worker_pid, worker_errors FROM vault.stats()", &[]).unwrap();
            (r.get(0), r.get(1))
        };
        assert!(pid.is_some(), "each database has its worker");
        assert_eq!(errors, 0, "{}", c.log());
    }
    let workers: Vec<(String, String)> = a
        .query("SELECT database::text, state FROM vault.workers WHERE database IN ('db_a', 'db_b') ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(workers, vec![("db_a".into(), "running".into()), ("db_b".into(), "running".into())]);
    let pid_a: i32 = a.query_one("SELECT worker_pid FROM vault.stats()", &[]).unwrap().get(0);
    let pid_b: i32 = b.query_one("SELECT worker_pid FROM vault.stats()", &[]).unwrap().get(0);
    assert_ne!(pid_a, pid_b);

    // both survive a restart, cold
    drop((a, b));
    c.restart();
    let mut a = c.client_db("db_a");
    let mut b = c.client_db("db_b");
    assert_eq!(current(&mut a, "shared/name"), ka);
    assert_eq!(current(&mut b, "shared/name"), kb);
    assert_eq!(read(&mut a, "svc/pw"), "value-in-a");
    assert_eq!(read(&mut b, "svc/pw"), "value-in-b");
    let pa: Vec<u8> = a.query_one("SELECT vault.decrypt('shared/col', ct, 'ctx') FROM t", &[]).unwrap().get(0);
    let pb: Vec<u8> = b.query_one("SELECT vault.decrypt('shared/col', ct, 'ctx') FROM t", &[]).unwrap().get(0);
    assert_eq!((pa.as_slice(), pb.as_slice()), (&b"from a"[..], &b"from b"[..]));
    assert_eq!(db_error(&b.query_one("SELECT * FROM vault.current('only/in/a')", &[]).unwrap_err()).0, "42704");
}

#[test]
fn drop_and_create_extension_in_sessions_that_stay_connected() {
    let c = Cluster::start_with_extension("drop-create-ext");
    let mut admin = c.client();
    let mut reader = c.client();
    admin.execute("SELECT vault.create_group('g')", &[]).unwrap();
    admin.execute("SELECT vault.create_group('gone')", &[]).unwrap();
    admin.execute("SELECT vault.create_group('col', 'encrypt')", &[]).unwrap();
    admin.execute("SELECT vault.create_secret('s', 'first life')", &[]).unwrap();
    let old = current(&mut reader, "g");
    current(&mut reader, "gone");
    assert_eq!(read(&mut reader, "s"), "first life");
    reader.query_one("SELECT vault.encrypt('col', 'x')", &[]).unwrap();

    admin.batch_execute("DROP EXTENSION secret_vault CASCADE; CREATE EXTENSION secret_vault;").unwrap();
    // groups of the old incarnation no longer exist, even warm in this session
    assert_eq!(db_error(&reader.query_one("SELECT * FROM vault.current('gone')", &[]).unwrap_err()).0, "42704");
    assert_eq!(db_error(&reader.query_one("SELECT vault.encrypt('col', 'x')", &[]).unwrap_err()).0, "42704");
    assert_eq!(db_error(&reader.query_one("SELECT vault.read_secret('s')", &[]).unwrap_err()).0, "42704");
    // a re-created group is a new key, never the old incarnation's
    admin.execute("SELECT vault.create_group('g')", &[]).unwrap();
    let new = current(&mut reader, "g");
    assert_ne!(new.1, old.1);
    admin.execute("SELECT vault.create_secret('s', 'second life')", &[]).unwrap();
    assert_eq!(read(&mut reader, "s"), "second life");
    assert_eq!(current(&mut admin, "g"), new);
}

#[test]
fn drop_database_with_its_worker_running_then_create_it_again() {
    let c = with_databases("drop-db", &["secret_vault.worker_interval = 100ms"], &["doomed"]);
    let mut admin = c.client();
    let mut d = c.client_db("doomed");
    d.execute("SELECT vault.create_group('g')", &[]).unwrap();
    let old = current(&mut d, "g");
    assert!(eventually(Duration::from_secs(10), || {
        d.query_one("SELECT worker_pid IS NOT NULL FROM vault.stats()", &[]).unwrap().get::<_, bool>(0)
    }));
    drop(d);
    // the worker is connected: DROP DATABASE must stop it, not fail
    admin.batch_execute("DROP DATABASE doomed").unwrap();
    admin.batch_execute("CREATE DATABASE doomed").unwrap();
    let mut d = c.client_db("doomed");
    d.batch_execute("CREATE EXTENSION secret_vault").unwrap();
    assert_eq!(db_error(&d.query_one("SELECT * FROM vault.current('g')", &[]).unwrap_err()).0, "42704");
    d.execute("SELECT vault.create_group('g')", &[]).unwrap();
    assert_ne!(current(&mut d, "g").1, old.1);
    // and the new database gets a worker of its own
    assert!(eventually(Duration::from_secs(20), || {
        d.query_one("SELECT worker_pid IS NOT NULL FROM vault.stats()", &[]).unwrap().get::<_, bool>(0)
    }));
    // renaming a database with a worker works too
    drop(d);
    admin.batch_execute("ALTER DATABASE doomed RENAME TO reborn").unwrap();
    let mut r = c.client_db("reborn");
    assert_eq!(current(&mut r, "g").0, 1);
}

#[test]
fn a_dump_restored_into_a_second_database_of_the_same_cluster_lives_on_its_own() {
    let mut c = Cluster::start_with_extension("dump-twin");
    let mut src = c.client();
    src.execute("SELECT vault.create_group('sig', propagation_delay => '0')", &[]).unwrap();
    src.execute("SELECT vault.create_group('col', 'encrypt')", &[]).unwrap();
    src.execute("SELECT vault.create_secret('app/pw', 'original')", &[]).unwrap();
    src.batch_execute("CREATE TABLE t AS SELECT vault.encrypt('col', 'row data', 'r1') AS ct").unwrap();
    let k1 = current(&mut src, "sig");
    let dump = c.dir.join("twin.dump");
    c.run_tool("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "postgres"]);
    src.batch_execute("CREATE DATABASE twin").unwrap();
    c.run_tool("pg_restore", &["-d", "twin", dump.to_str().unwrap()]);
    let mut twin = c.client_db("twin");
    assert_eq!(current(&mut twin, "sig"), k1, "a restore carries the same keys");
    assert_eq!(read(&mut twin, "app/pw"), "original");
    // from here on the two databases diverge, and neither sees the other's changes
    let v2: i32 = twin.query_one("SELECT vault.rotate('sig')", &[]).unwrap().get(0);
    assert_eq!(current(&mut twin, "sig").0, v2);
    assert_eq!(current(&mut src, "sig"), k1);
    twin.execute("SELECT vault.update_secret('app/pw', 'changed in twin')", &[]).unwrap();
    assert_eq!(read(&mut src, "app/pw"), "original");
    src.execute("SELECT vault.delete_secret('app/pw')", &[]).unwrap();
    src.execute("SELECT vault.create_secret('app/pw', 'recreated in source')", &[]).unwrap();
    assert_eq!(read(&mut twin, "app/pw"), "changed in twin");
    drop((src, twin));
    c.restart();
    let mut src = c.client();
    let mut twin = c.client_db("twin");
    assert_eq!(read(&mut src, "app/pw"), "recreated in source");
    assert_eq!(read(&mut twin, "app/pw"), "changed in twin");
    assert_eq!(current(&mut src, "sig"), k1);
    assert_eq!(current(&mut twin, "sig").0, v2);
    for db in [&mut src, &mut twin] {
        let pt: Vec<u8> = db.query_one("SELECT vault.decrypt('col', ct, 'r1') FROM t", &[]).unwrap().get(0);
        assert_eq!(pt, b"row data");
    }
}

#[test]
fn create_extension_refuses_a_schema_or_roles_someone_else_prepared() {
    let c = Cluster::start_with("hostile", &[]);
    let mut su = c.client();
    su.batch_execute("DROP EXTENSION secret_vault; DROP SCHEMA vault CASCADE; CREATE ROLE mallory LOGIN;").unwrap();
    su.batch_execute("GRANT CREATE ON DATABASE postgres TO mallory").unwrap();

    // a schema created beforehand by another role
    su.batch_execute("SET ROLE mallory; CREATE SCHEMA vault; RESET ROLE;").unwrap();
    let e = su.batch_execute("CREATE EXTENSION secret_vault").unwrap_err();
    let (sqlstate, msg) = db_error(&e);
    assert_eq!(sqlstate, "42P06");
    assert!(msg.contains("schema \"vault\" already exists"), "{msg}");
    // a superuser's schema where others may create objects
    su.batch_execute("DROP SCHEMA vault; CREATE SCHEMA vault; GRANT CREATE ON SCHEMA vault TO mallory;").unwrap();
    assert_eq!(code(&mut su, "CREATE EXTENSION secret_vault"), "42P06");
    // a superuser's schema with an object planted in it
    su.batch_execute("DROP SCHEMA vault; CREATE SCHEMA vault; CREATE FUNCTION vault.read_secret(text) RETURNS text LANGUAGE sql AS 'SELECT $1';")
        .unwrap();
    assert_eq!(code(&mut su, "CREATE EXTENSION secret_vault"), "42P06");
    su.batch_execute("DROP SCHEMA vault CASCADE").unwrap();

    // look-alike roles with powers the extension never gives its roles
    su.batch_execute("DROP ROLE IF EXISTS vault_admin; CREATE ROLE vault_admin LOGIN").unwrap();
    assert_eq!(code(&mut su, "CREATE EXTENSION secret_vault"), "42710");
    su.batch_execute("DROP ROLE vault_admin; CREATE ROLE vault_admin NOLOGIN; DROP ROLE IF EXISTS vault_owner; CREATE ROLE vault_owner NOLOGIN BYPASSRLS")
        .unwrap();
    assert_eq!(code(&mut su, "CREATE EXTENSION secret_vault"), "42710");
    su.batch_execute("ALTER ROLE vault_owner NOBYPASSRLS; GRANT vault_owner TO mallory;").unwrap();
    assert_eq!(code(&mut su, "CREATE EXTENSION secret_vault"), "42710");
    su.batch_execute("REVOKE vault_owner FROM mallory").unwrap();

    // a schema handed to a superuser in the same transaction proves nothing
    let e = su
        .batch_execute(
            "BEGIN; SET ROLE mallory; CREATE SCHEMA vault; CREATE FUNCTION vault.current(varchar) RETURNS text LANGUAGE sql AS 'SELECT $1';
             RESET ROLE; ALTER SCHEMA vault OWNER TO postgres; CREATE EXTENSION secret_vault; COMMIT;",
        )
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42P06");
    su.batch_execute("ROLLBACK").unwrap();
    let e = su.batch_execute("BEGIN; CREATE SCHEMA vault AUTHORIZATION mallory; CREATE EXTENSION secret_vault; COMMIT;").unwrap_err();
    assert_eq!(db_error(&e).0, "42P06");
    su.batch_execute("ROLLBACK").unwrap();

    // default privileges of the installing role grant nothing on the vault
    su.batch_execute(
        "CREATE ROLE reporting LOGIN;
         ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reporting;
         ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO reporting;",
    )
    .unwrap();

    // once the ground is clean the install works, and nothing runs as a superuser
    su.batch_execute("CREATE EXTENSION secret_vault").unwrap();
    let leaked: i64 = su
        .query_one(
            "SELECT count(*) FROM (
               SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'vault'::regnamespace
                  AND has_table_privilege('reporting', c.oid, 'SELECT')
               UNION ALL
               SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'vault'::regnamespace
                  AND has_function_privilege('reporting', p.oid, 'EXECUTE')) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "default privileges reached the vault");
    let owners: Vec<String> = su
        .query(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.relnamespace = 'vault'::regnamespace
               AND c.relkind IN ('r', 'v', 'S')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec!["vault_owner".to_string()]);
    let definers: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
              WHERE p.pronamespace = 'vault'::regnamespace AND p.prosecdef AND r.rolsuper",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(definers, 0, "no SECURITY DEFINER function may run as a superuser");
    su.execute("SELECT vault.create_group('after')", &[]).unwrap();

    // renaming the schema and planting a new 'vault' redirects nothing
    su.batch_execute(
        "ALTER SCHEMA vault RENAME TO vault_real;
         CREATE SCHEMA vault AUTHORIZATION mallory;
         CREATE TABLE vault.key_groups (LIKE vault_real.key_groups);
         CREATE TABLE vault.secret_store (LIKE vault_real.secret_store);
         ALTER TABLE vault.key_groups OWNER TO mallory;
         ALTER TABLE vault.secret_store OWNER TO mallory;
         GRANT USAGE ON SCHEMA vault TO PUBLIC;
         GRANT ALL ON vault.key_groups, vault.secret_store TO PUBLIC;",
    )
    .unwrap();
    su.execute("SELECT vault_real.create_group('after/rename')", &[]).unwrap();
    su.execute("SELECT vault_real.create_secret('captured?', 'not by mallory')", &[]).unwrap();
    let v: String = su.query_one("SELECT vault_real.read_secret('captured?')", &[]).unwrap().get(0);
    assert_eq!(v, "not by mallory");
    let planted: i64 = su
        .query_one("SELECT (SELECT count(*) FROM vault.key_groups) + (SELECT count(*) FROM vault.secret_store)", &[])
        .unwrap()
        .get(0);
    assert_eq!(planted, 0, "the extension wrote into the planted schema");
}

#[test]
fn readers_cannot_open_or_forge_secret_values_and_tampered_purpose_fails_closed() {
    let mut c = Cluster::start_with_extension("domains");
    let mut su = c.client();
    su.batch_execute(
        "CREATE ROLE app LOGIN IN ROLE vault_reader;
         SELECT vault.create_secret('db/password', 'hunter2-do-not-leak');
         SELECT vault.create_group('enc', 'encrypt');
         CREATE TABLE stolen AS SELECT s.id, s.current_version AS v, s.current_ciphertext AS ct FROM vault.secret_store s;
         GRANT SELECT ON stolen TO app;",
    )
    .unwrap();
    let ct: Vec<u8> = su.query_one("SELECT ct FROM stolen", &[]).unwrap().get(0);
    assert_eq!(ct[0], 0x02, "secret values are written in their own format");
    let mut app = Client::connect(&c.conninfo("postgres").replace("user=postgres", "user=app"), secret_vault_it::NoTls).unwrap();
    // vault.decrypt refuses a secret's ciphertext, whatever context it is given
    for ctx in ["", "secret_vault/secret/v1"] {
        let e = app
            .query_one("SELECT vault.decrypt('vault/secrets', ct, convert_to($1, 'UTF8')) FROM stolen", &[&ctx])
            .unwrap_err();
        assert_eq!(db_error(&e).0, "42809", "context {ctx:?}");
    }
    // nor can vault.encrypt forge a value in the old secret domain
    let e = app
        .query_one("SELECT vault.encrypt('enc', 'forged', convert_to('secret_vault/secret/v1xyz', 'UTF8'))", &[])
        .unwrap_err();
    assert_eq!(db_error(&e).0, "22023");
    // the internal opener is not the reader's
    let e = app
        .query_one("SELECT vault._open_secret('db/password', 'vault/secrets', id, v, ct) FROM stolen", &[])
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42501");
    let e = app.query_one("SELECT * FROM vault.decrypted_secrets", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "42501");
    // EXECUTE on the opener alone is not enough either: it wants SELECT on the view
    su.batch_execute("GRANT EXECUTE ON FUNCTION vault._open_secret(text, text, uuid, int, bytea) TO app").unwrap();
    let e = app
        .query_one("SELECT vault._open_secret('db/password', 'vault/secrets', id, v, ct) FROM stolen", &[])
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42501");
    su.batch_execute("GRANT SELECT ON vault.decrypted_secrets TO app").unwrap();
    let v: String = app.query_one("SELECT value FROM vault.decrypted_secrets", &[]).unwrap().get(0);
    assert_eq!(v, "hunter2-do-not-leak");
    assert_eq!(read(&mut app, "db/password"), "hunter2-do-not-leak");

    // A flipped purpose makes an encrypt-only key unusable, never exportable:
    // warm, the cache still knows it as encrypt-only (42809); cold, the
    // wrapped key no longer unwraps (XX001). An edited key size likewise.
    su.batch_execute("SELECT vault.create_group('exp', key_bytes => 32)").unwrap();
    current(&mut app, "exp");
    su.batch_execute(
        "UPDATE vault.key_groups SET purpose = 'export' WHERE name = 'enc';
         UPDATE vault.key_groups SET key_bytes = 16 WHERE name = 'exp';",
    )
    .unwrap();
    let e = app.query_one("SELECT key FROM vault.current('enc')", &[]).unwrap_err();
    assert!(["42809", "XX001"].contains(&db_error(&e).0.as_str()), "{e:?}");
    let log = c.log();
    assert!(!log.contains("hunter2"), "secret value in the server log");
    drop((su, app));
    c.restart();
    let mut app = Client::connect(&c.conninfo("postgres").replace("user=postgres", "user=app"), secret_vault_it::NoTls).unwrap();
    for sql in ["SELECT key FROM vault.current('enc')", "SELECT vault.resolve('enc', 1)", "SELECT key FROM vault.current('exp')"] {
        let e = app.query_one(sql, &[]).unwrap_err();
        assert_eq!(db_error(&e).0, "XX001", "{sql}");
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}

#[test]
fn prepare_transaction_after_a_vault_change_is_refused() {
    let c = Cluster::start_with("prepare", &["max_prepared_transactions = 4"]);
    let mut a = c.client();
    let mut b = c.client();
    a.execute("SELECT vault.create_group('p', propagation_delay => '0')", &[]).unwrap();
    let before = current(&mut b, "p");
    for write in [
        "SELECT vault.rotate('p')",
        "SELECT vault.retire('p', 1)",
        "SELECT vault.create_group('p2')",
        "SELECT vault.create_secret('ps', 'x')",
        "SELECT vault.drop_group('p')",
    ] {
        let e = a.batch_execute(&format!("BEGIN; {write}; PREPARE TRANSACTION 'vault_tx';")).unwrap_err();
        assert_eq!(db_error(&e).0, "0A000", "{write}");
        let _ = a.batch_execute("ROLLBACK");
    }
    let e = a.batch_execute("BEGIN; DROP EXTENSION secret_vault CASCADE; PREPARE TRANSACTION 'drop_tx';").unwrap_err();
    assert_eq!(db_error(&e).0, "0A000", "DROP EXTENSION");
    let _ = a.batch_execute("ROLLBACK");
    let prepared: i64 = a.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).unwrap().get(0);
    assert_eq!(prepared, 0);
    assert_eq!(current(&mut b, "p"), before, "nothing changed");
    // a transaction that did not touch the vault still prepares
    a.batch_execute("BEGIN; CREATE TABLE unrelated (i int); PREPARE TRANSACTION 'other';").unwrap();
    a.batch_execute("COMMIT PREPARED 'other'").unwrap();
}

#[test]
fn a_secret_never_outlives_its_group_or_its_values_their_secret_whatever_the_interleaving() {
    let c = Cluster::start_with_extension("integrity");
    let mut setup = c.client();
    setup.execute("SELECT vault.create_group('g', 'encrypt')", &[]).unwrap();

    // create_secret uncommitted, drop_group waits for it and then refuses
    let mut a = c.client();
    let mut ta = a.transaction().unwrap();
    ta.execute("SELECT vault.create_secret('s1', 'v', key_group => 'g')", &[]).unwrap();
    let info = c.conninfo("postgres");
    let dropper = std::thread::spawn(move || {
        let mut b = Client::connect(&info, secret_vault_it::NoTls).unwrap();
        b.batch_execute("SELECT vault.drop_group('g')").map_err(|e| db_error(&e).0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!dropper.is_finished(), "drop_group must wait for the open create_secret");
    ta.commit().unwrap();
    assert_eq!(dropper.join().unwrap(), Err("2BP01".to_string()));
    assert_eq!(read(&mut setup, "s1"), "v");

    // drop_group uncommitted, create_secret waits for it and then says the group is gone
    setup.execute("SELECT vault.create_group('g2', 'encrypt')", &[]).unwrap();
    setup.query_one("SELECT vault.encrypt('g2', 'warm the shared cache')", &[]).unwrap();
    let mut tb = a.transaction().unwrap();
    tb.execute("SELECT vault.drop_group('g2')", &[]).unwrap();
    let info = c.conninfo("postgres");
    let create = std::thread::spawn(move || {
        let mut cr = Client::connect(&info, secret_vault_it::NoTls).unwrap();
        cr.batch_execute("SELECT vault.create_secret('s2', 'v', key_group => 'g2')").map_err(|e| db_error(&e).0)
    });
    std::thread::sleep(Duration::from_millis(500));
    tb.commit().unwrap();
    assert_eq!(create.join().unwrap(), Err("42704".to_string()));
    let orphans: i64 = setup
        .query_one(
            "SELECT (SELECT count(*) FROM vault.secret_store s WHERE NOT EXISTS (SELECT 1 FROM vault.key_groups g WHERE g.id = s.key_group_id))
                  + (SELECT count(*) FROM vault.secret_values v WHERE NOT EXISTS (SELECT 1 FROM vault.secret_store s WHERE s.id = v.secret_id))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);

    // rotation uncommitted, delete_secret waits; no superseded value is left behind
    setup.execute("SELECT vault.create_rotating_secret('r', '1 day')", &[]).unwrap();
    let mut tr = a.transaction().unwrap();
    tr.execute("SELECT vault.rotate_secret('r')", &[]).unwrap();
    let info = c.conninfo("postgres");
    let deleter = std::thread::spawn(move || {
        let mut d = Client::connect(&info, secret_vault_it::NoTls).unwrap();
        d.batch_execute("SELECT vault.delete_secret('r')").map_err(|e| db_error(&e).0)
    });
    std::thread::sleep(Duration::from_millis(500));
    tr.commit().unwrap();
    assert_eq!(deleter.join().unwrap(), Ok(()));
    let left: i64 = setup.query_one("SELECT count(*) FROM vault.secret_values", &[]).unwrap().get(0);
    assert_eq!(left, 0, "a value the rotation moved survived its secret");

    // and the tables refuse what the functions would: a direct delete of a sealing group
    let e = setup.batch_execute("DELETE FROM vault.key_groups WHERE name = 'g'").unwrap_err();
    assert_eq!(db_error(&e).0, "23503");
}

#[test]
fn a_standby_session_that_stays_connected_follows_delete_recreate_and_drop() {
    let primary = Cluster::start_with("follow-primary", &["secret_vault.worker_interval = 100ms"]);
    let mut p = primary.client();
    p.batch_execute(
        "SELECT vault.create_secret('app/token', 'first');
         SELECT vault.create_group('sig', propagation_delay => '0');
         SELECT vault.create_group('temp');",
    )
    .unwrap();
    let standby = primary.standby(
        "follow-standby",
        &["secret_vault.sync_interval = 200ms", "secret_vault.worker_interval = 100ms"],
    );
    let mut s = standby.client();
    assert!(eventually(Duration::from_secs(10), || {
        s.query_opt("SELECT 1 FROM vault.groups WHERE name = 'temp'", &[]).unwrap().is_some()
    }));
    // the long-lived session warms everything
    for _ in 0..3 {
        assert_eq!(read(&mut s, "app/token"), "first");
        current(&mut s, "sig");
        current(&mut s, "temp");
    }
    let verify = |s: &mut Client, v: &str| -> bool {
        s.query_one("SELECT vault.verify_secret('app/token', $1)", &[&v]).unwrap().get(0)
    };
    assert!(verify(&mut s, "first"));

    // delete and re-create the secret: same name, same version number, new id
    p.batch_execute("SELECT vault.delete_secret('app/token'); SELECT vault.create_secret('app/token', 'second');").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || read(&mut s, "app/token") == "second"),
        "the standby session kept serving the deleted secret"
    );
    assert!(!verify(&mut s, "first"), "a deleted value still verifies on the standby");
    assert!(verify(&mut s, "second"));

    // drop and re-create a group under the same name
    let old = current(&mut s, "sig");
    p.batch_execute("SELECT vault.drop_group('sig'); SELECT vault.create_group('sig', propagation_delay => '0');").unwrap();
    let fresh = current(&mut p, "sig");
    assert_ne!(fresh.1, old.1);
    assert!(eventually(Duration::from_secs(5), || current(&mut s, "sig") == fresh));
    // drop a group outright
    p.batch_execute("SELECT vault.drop_group('temp')").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        s.query_one("SELECT * FROM vault.current('temp')", &[]).is_err()
    }));
    assert_eq!(db_error(&s.query_one("SELECT * FROM vault.current('temp')", &[]).unwrap_err()).0, "42704");
    // retire and rotate
    p.batch_execute("SELECT vault.rotate('sig'); SELECT vault.retire('sig', 2);").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        s.query_one("SELECT vault.resolve('sig', 1)", &[]).is_err() && current(&mut s, "sig").0 == 2
    }));
    assert_eq!(db_error(&s.query_one("SELECT vault.resolve('sig', 1)", &[]).unwrap_err()).0, "55000");
}

#[test]
fn only_a_database_owner_can_stop_its_worker_and_databases_without_the_extension_hold_no_worker() {
    // Five worker slots (the logical replication launcher, ours, two vault
    // databases, one to spare) and more databases than that.
    let c = Cluster::start_with(
        "many-dbs",
        &["max_worker_processes = 5", "max_parallel_workers = 0", "secret_vault.worker_interval = 100ms"],
    );
    let mut su = c.client();
    for i in 0..6 {
        su.batch_execute(&format!("CREATE DATABASE plain_{i}")).unwrap();
    }
    su.batch_execute("CREATE DATABASE appdb").unwrap();
    su.batch_execute("CREATE ROLE intruder LOGIN").unwrap();
    let mut app = c.client_db("appdb");
    app.batch_execute("CREATE EXTENSION secret_vault").unwrap();
    let pid = |db: &mut Client| -> Option<i32> { db.query_one("SELECT worker_pid FROM vault.stats()", &[]).unwrap().get(0) };
    assert!(eventually(Duration::from_secs(30), || pid(&mut app).is_some()), "appdb got no worker");
    let first = pid(&mut app).unwrap();
    // probes of the plain databases come and go; none keeps a registry slot
    std::thread::sleep(Duration::from_secs(3));
    let held: i64 = su
        .query_one("SELECT count(*) FROM vault.workers WHERE database LIKE 'plain_%' AND state = 'extension not installed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "a database without the extension keeps a worker slot");
    let running: Vec<String> = su
        .query("SELECT database::text FROM vault.workers WHERE state = 'running' AND database NOT LIKE 'plain_%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(running, vec!["appdb".to_string(), "postgres".to_string()]);

    // someone who may not drop or rename appdb cannot stop its worker by trying
    let mut intruder =
        Client::connect(&c.conninfo("postgres").replace("user=postgres", "user=intruder"), secret_vault_it::NoTls).unwrap();
    for sql in ["DROP DATABASE appdb", "ALTER DATABASE appdb RENAME TO x", "CREATE DATABASE y TEMPLATE appdb"] {
        assert!(intruder.batch_execute(sql).is_err(), "{sql}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pid(&mut app), Some(first), "an unprivileged DROP/RENAME/TEMPLATE stopped the worker");
    // CREATE DATABASE ... TEMPLATE DEFAULT is not a database name
    su.batch_execute("CREATE DATABASE z TEMPLATE DEFAULT").unwrap();
}

#[test]
fn a_standby_whose_worker_restarts_still_follows_secret_changes_made_meanwhile() {
    let primary = Cluster::start_with("restart-primary", &["secret_vault.worker_interval = 100ms"]);
    let mut p = primary.client();
    p.batch_execute("SELECT vault.create_secret('svc/key', 'before')").unwrap();
    let standby = primary.standby("restart-standby", &["secret_vault.sync_interval = 200ms", "secret_vault.worker_interval = 100ms"]);
    let mut s = standby.client();
    assert!(eventually(Duration::from_secs(10), || {
        s.query_one("SELECT vault.read_secret('svc/key')", &[]).map(|r| r.get::<_, String>(0) == "before").unwrap_or(false)
    }));
    for _ in 0..3 {
        assert_eq!(read(&mut s, "svc/key"), "before");
    }
    // stop the standby's worker, change the secret while it is down
    let mut admin = standby.client();
    let stopped: bool = admin
        .query_one(
            "SELECT pg_terminate_backend(worker_pid) FROM vault.stats() WHERE worker_pid IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stopped);
    p.batch_execute("SELECT vault.delete_secret('svc/key'); SELECT vault.create_secret('svc/key', 'after');").unwrap();
    assert!(
        eventually(Duration::from_secs(20), || read(&mut s, "svc/key") == "after"),
        "the standby session kept the old value after its worker came back"
    );
}
