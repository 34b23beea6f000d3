//! Nothing secret in the server log: a sentinel passed to every vault SQL
//! function, as a literal and as a bind parameter, in calls that succeed and
//! calls that fail, never reaches the server log, whether the log holds
//! every statement (with durations and parameters) or only failing ones; on
//! a primary and on a standby. The log still says what failed. With
//! `secret_vault.redact_server_log` off the sentinel does reach it, which
//! shows that these tests can fail.

use std::time::Duration;

use secret_vault_it::{db_error, eventually, Client, Cluster, NoTls};

/// Every statement with its duration and parameters, and the parameters of
/// failing ones too.
const VERBOSE: &[&str] = &[
    "log_statement = 'all'",
    "log_min_duration_statement = 0",
    "log_min_error_statement = error",
    "log_parameter_max_length_on_error = -1",
    "log_error_verbosity = verbose",
];

fn sentinel() -> String {
    format!("SENTINEL-{:016x}", rand::random::<u64>())
}

fn assert_not_in_log(c: &Cluster, sentinel: &str, which: &str) {
    let log = c.log();
    let lines: Vec<&str> = log.lines().collect();
    let hits: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(sentinel))
        .map(|(i, _)| lines[i.saturating_sub(3)..=i].join("\n"))
        .collect();
    assert!(hits.is_empty(), "the sentinel reached the {which} server log:\n{}", hits.join("\n"));
}

fn connect_as(c: &Cluster, role: &str) -> Client {
    Client::connect(&c.conninfo("postgres").replace("user=postgres", &format!("user={role}")), NoTls).unwrap()
}

fn succeeds(db: &mut Client, sql: &str) {
    db.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `sql` with the simple protocol, then the extended one (parse, bind,
/// execute: other log lines); both must fail with `code` ("" for any).
fn fails(db: &mut Client, sql: &str, code: &str) {
    let simple = db.batch_execute(sql).expect_err(sql);
    let extended = db.query(sql, &[]).map(drop).expect_err(sql);
    for e in [simple, extended] {
        let got = db_error(&e).0;
        assert!(code.is_empty() || got == code, "{sql}: SQLSTATE {got}, expected {code}");
    }
}

/// Groups, a secret, roles without rights, wrappers that do not say
/// "vault", and a function whose failing statement is quoted in CONTEXT.
fn setup(db: &mut Client, s: &str) {
    succeeds(
        db,
        &format!(
            "SELECT vault.create_group('lr/sign', propagation_delay => '0');
             SELECT vault.create_group('lr/col', 'encrypt');
             SELECT vault.create_secret('lr/b', '{s}');
             CREATE ROLE lr_nobody;
             CREATE ROLE lr_reader IN ROLE vault_reader;
             CREATE FUNCTION public.app_lookup(n text) RETURNS text LANGUAGE sql
               AS $f$ SELECT vault.read_secret(n) $f$;
             CREATE FUNCTION public.app_check(n text) RETURNS boolean LANGUAGE plpgsql AS $f$
             BEGIN
               IF vault.verify_secret('lr/b', 'not ' || n) THEN RETURN true; END IF;
               RETURN n::int > 0;
             END $f$;
             CREATE FUNCTION public.app_store() RETURNS void LANGUAGE plpgsql AS $f$
             BEGIN
               PERFORM vault.create_secret('lr/fn', '{s}');
               PERFORM vault.create_secret('lr/fn', '{s}');
             END $f$;"
        ),
    );
}

/// Every vault function, called the way it works.
fn calls_that_succeed(db: &mut Client, s: &str) {
    for sql in [
        format!("SELECT vault.create_secret('lr/a', '{s}', 'described as {s}')"),
        "SELECT vault.read_secret('lr/a')".to_string(),
        format!("SELECT vault.verify_secret('lr/a', '{s}')"),
        format!("SELECT vault.verify_secret('lr/a', '{s}-wrong')"),
        format!("SELECT vault.verify_secret('lr/a', E'{s}\\x21')"),
        format!("SELECT vault.verify_secret('lr/a', $q${s}$q$)"),
        format!("SELECT vault.update_secret('lr/a', '{s}-v2')"),
        format!("SELECT vault.create_rotating_secret('lr/rot', '1 day', description => '{s}')"),
        "SELECT vault.rotate_secret('lr/rot')".to_string(),
        "SELECT count(*) FROM vault.secret_versions('lr/a')".to_string(),
        format!("SELECT count(*) FROM vault.decrypted_secrets WHERE value = '{s}-v2'"),
        format!("SELECT vault.encrypt('lr/col', convert_to('{s}', 'UTF8'), convert_to('{s}', 'UTF8'))"),
        format!("SELECT vault.decrypt('lr/col', vault.encrypt('lr/col', '{s}'::bytea, '{s}'::bytea), '{s}'::bytea)"),
        "SELECT version FROM vault.current('lr/sign')".to_string(),
        "SELECT vault.resolve('lr/sign', 1)".to_string(),
        "SELECT vault.rotate('lr/sign')".to_string(),
        "SELECT vault.retire('lr/sign', 2)".to_string(),
        "SELECT vault.create_group('lr/tmp'); SELECT vault.drop_group('lr/tmp')".to_string(),
        "SELECT * FROM vault.stats()".to_string(),
        "SELECT * FROM vault.worker_status()".to_string(),
        "SELECT vault.destroy('lr/sign', 1)".to_string(),
        format!("SELECT count(*) FROM vault.worker_failures WHERE last_error = '{s}'"),
        // Apart: statement logging shows the prepared text only for a
        // statement prepared before the EXECUTE was sent.
        "PREPARE lr_p(text, text) AS SELECT vault.create_secret($1, $2)".to_string(),
        format!("EXECUTE lr_p('lr/prep', '{s}')"),
        format!("PREPARE lr_q AS SELECT vault.verify_secret('lr/b', '{s}')"),
        "EXECUTE lr_q".to_string(),
        format!("DO $$ BEGIN PERFORM vault.verify_secret('lr/b', '{s}'); END $$"),
        "SELECT vault.delete_secret('lr/a')".to_string(),
    ] {
        succeeds(db, &sql);
    }
    // Extended protocol, the sentinel as a bind parameter.
    db.query("SELECT vault.create_secret($1, $2)", &[&"lr/ext", &s]).unwrap();
    assert!(db.query_one("SELECT vault.verify_secret($1, $2)", &[&"lr/ext", &s]).unwrap().get::<_, bool>(0));
    db.query("SELECT vault.encrypt('lr/col', convert_to($1, 'UTF8'), convert_to($2, 'UTF8'))", &[&s, &s]).unwrap();
}

/// Every vault function, called wrongly: duplicates, unknown names, a value
/// where a name belongs, wrong types and arguments, prepared statements, DO
/// blocks, wrappers, and no rights. `lr/b`, `lr/prep` and `lr/ext` exist.
fn calls_that_fail(db: &mut Client, s: &str) {
    for (sql, code) in [
        (format!("SELECT vault.create_secret('lr/b', '{s}')"), "42710"),
        (format!("SELECT vault.create_secret('lr/b', $q${s}$q$)"), "42710"),
        (format!("SELECT vault.create_secret('', '{s}')"), "22023"),
        (format!("SELECT vault.update_secret('lr/missing', '{s}')"), "42704"),
        (format!("SELECT vault.update_secret('lr/missing',\n E'{s}\\n')"), "42704"),
        (format!("SELECT vault.verify_secret('lr/missing', '{s}')"), "42704"),
        (format!("SELECT vault.verify_secret('lr/b', '{s}'::int::text)"), "22P02"),
        (format!("SELECT vault.read_secret('{s}')"), "42704"),
        (format!("SELECT vault.update_secret('{s}', 'lr/b')"), "42704"),
        (format!("SELECT vault.rotate_secret('{s}')"), "42704"),
        (format!("SELECT vault.delete_secret('{s}')"), "42704"),
        (format!("SELECT * FROM vault.secret_versions('{s}')"), "42704"),
        (format!("SELECT vault.create_secret('lr/c', '{s}', key_group => '{s}')"), "42704"),
        (format!("SELECT vault.create_rotating_secret('lr/d', '1 day', generator => '{s}')"), "22023"),
        (format!("SELECT vault.create_rotating_secret('lr/d', '{s}')"), "22007"),
        (format!("SELECT * FROM vault.current('{s}')"), "42704"),
        (format!("SELECT vault.resolve('lr/sign', '{s}')"), "22P02"),
        (format!("SELECT vault.resolve('{s}', 1)"), "42704"),
        (format!("SELECT vault.encrypt('{s}', 'x')"), "42704"),
        (format!("SELECT vault.encrypt('lr/sign', '{s}')"), "42809"),
        (format!("SELECT vault.decrypt('lr/col', '{s}'::bytea, '{s}'::bytea)"), ""),
        (format!("SELECT vault.decrypt('{s}', vault.encrypt('lr/col', 'x'))"), "42704"),
        (format!("SELECT vault._open_secret('{s}', '{s}', gen_random_uuid(), 1, '\\x00'::bytea)"), ""),
        (format!("SELECT vault.rotate('{s}')"), "42704"),
        (format!("SELECT vault.retire('{s}', 1)"), "42704"),
        (format!("SELECT vault.retire('lr/sign', '{s}')"), "22P02"),
        (format!("SELECT vault.drop_group('{s}')"), "42704"),
        (format!("SELECT vault.destroy('{s}', 1)"), "42704"),
        (format!("SELECT vault.destroy('lr/sign', '{s}')"), "22P02"),
        (format!("SELECT * FROM vault.worker_failures WHERE object = '{s}'::int::text"), "22P02"),
        (format!("SELECT vault.create_group('lr/e', '{s}')"), "22023"),
        (format!("SELECT vault.create_group('lr/e', rotation_interval => '{s}')"), "22007"),
        (format!("SELECT vault.create_group('lr/e', kms_key => '{s}')"), "42704"),
        // An extra argument, a misspelt one: no such function.
        (format!("SELECT vault.create_secret('lr/c', '{s}', 'd', NULL, 'extra')"), "42883"),
        (format!("SELECT vault.create_secret(name => 'lr/c', valeu => '{s}')"), "42883"),
        // Prepared statements: the value in EXECUTE, or in the prepared text.
        (format!("EXECUTE lr_p('lr/prep', '{s}')"), "42710"),
        (format!("EXECUTE lr_s('{s}')"), "22P02"),
        ("EXECUTE lr_r".to_string(), "42704"),
        // DO blocks: the error comes from a statement inside.
        (format!("DO $$ BEGIN PERFORM vault.create_secret('lr/do', '{s}'); PERFORM vault.create_secret('lr/do', '{s}'); END $$"), "42710"),
        (format!("DO $lr$ DECLARE v text := '{s}'; BEGIN PERFORM vault.read_secret(v); END $lr$"), "42704"),
        // A function's statement, quoted in CONTEXT, holds the values.
        ("SELECT app_store()".to_string(), "42710"),
    ] {
        fails(db, &sql, code);
    }
    // Extended protocol, the sentinel as a bind parameter.
    for (sql, params, code) in [
        ("SELECT vault.create_secret($1, $2)", vec!["lr/ext", s], "42710"),
        ("SELECT vault.read_secret($1)", vec![s], "42704"),
        ("SELECT vault.update_secret($1, $2)", vec![s, "lr/ext"], "42704"),
        ("SELECT * FROM vault.current($1)", vec![s], "42704"),
        ("SELECT vault.resolve('lr/sign', $1::text::int)", vec![s], "22P02"),
    ] {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
        let e = db.query(sql, &params).expect_err(sql);
        assert_eq!(db_error(&e).0, code, "{sql}");
    }
    // No rights at all, then a reader's rights, qualified and not: the
    // errors are raised before any vault code runs.
    succeeds(db, "SET ROLE lr_nobody");
    fails(db, &format!("SELECT vault.create_secret('lr/f', '{s}')"), "42501");
    fails(db, &format!("SELECT vault.verify_secret('lr/b', '{s}')"), "42501");
    fails(db, &format!("SELECT create_secret('lr/f', '{s}')"), "42883");
    succeeds(db, "RESET ROLE; SET ROLE lr_reader");
    fails(db, &format!("SELECT vault.create_secret('lr/f', '{s}')"), "42501");
    succeeds(db, "SET search_path = vault, public");
    fails(db, &format!("SELECT create_secret('lr/f', '{s}')"), "42501");
    succeeds(db, "SET search_path = public");
    fails(db, &format!("SELECT create_secret('lr/f', '{s}')"), "42883");
    succeeds(db, "RESET ROLE; RESET search_path");
}

/// Wrappers whose text never says "vault": our own error, and one of
/// PostgreSQL's raised after a vault call in the same statement. Not with
/// `log_statement = 'all'`: that logs their text before any vault code runs
/// (docs/logging.md).
fn calls_through_wrappers(db: &mut Client, s: &str) {
    fails(db, &format!("SELECT app_lookup('{s}')"), "42704");
    fails(db, &format!("SELECT app_check('{s}')"), "22P02");
}

fn prepare_failing_statements(db: &mut Client, s: &str) {
    succeeds(
        db,
        &format!(
            "PREPARE lr_r AS SELECT vault.read_secret('{s}');
             PREPARE lr_s(int) AS SELECT vault.resolve('lr/sign', $1);"
        ),
    );
}

#[test]
fn a_sentinel_passed_to_every_vault_function_stays_out_of_a_log_of_every_statement() {
    let s = sentinel();
    let primary = Cluster::start_with("logredact-verbose", VERBOSE);
    let mut db = primary.client();
    setup(&mut db, &s);
    // Made now, it has lr/b; pg_basebackup copies the logging settings.
    let standby = primary.standby("logredact-standby", &[]);

    calls_that_succeed(&mut db, &s);
    prepare_failing_statements(&mut db, &s);
    calls_that_fail(&mut db, &s);
    // A name that matches nothing is not repeated (src/error.rs).
    let e = db.query("SELECT vault.read_secret($1)", &[&s]).unwrap_err();
    assert_eq!(db_error(&e).1, "secret does not exist");
    // PostgreSQL's own error quoting an input: the client sees it redacted too.
    let e = db.batch_execute(&format!("SELECT vault.resolve('lr/sign', '{s}')")).unwrap_err();
    assert_eq!(db_error(&e).1, "invalid input syntax for type integer: \"[redacted]\"");
    // A statement about something else is logged as it was.
    succeeds(&mut db, "SELECT 'unrelated-literal-' || 42");

    // A standby: reads work, writes are refused before any SQL runs.
    let mut sb = standby.client();
    assert!(eventually(Duration::from_secs(10), || {
        sb.query_one("SELECT count(*) FROM vault.secrets WHERE name = 'lr/ext'", &[]).unwrap().get::<_, i64>(0) == 1
    }));
    succeeds(&mut sb, &format!("SELECT vault.verify_secret('lr/b', '{s}')"));
    fails(&mut sb, &format!("SELECT vault.create_secret('lr/sb', '{s}')"), "25006");
    fails(&mut sb, &format!("SELECT vault.update_secret('lr/b', '{s}')"), "25006");
    fails(&mut sb, &format!("SELECT vault.rotate('{s}')"), "25006");
    fails(&mut sb, &format!("SELECT vault.read_secret('{s}')"), "42704");
    let e = sb.query("SELECT vault.create_secret($1, $2)", &[&"lr/sb", &s]).unwrap_err();
    assert_eq!(db_error(&e).0, "25006");
    let e = sb.query("SELECT vault.read_secret($1)", &[&s]).unwrap_err();
    assert_eq!(db_error(&e).0, "42704");

    assert_not_in_log(&primary, &s, "primary");
    assert_not_in_log(&standby, &s, "standby");

    // Redacted, the log still tells what happened.
    let log = primary.log();
    for expected in [
        "statement: SELECT vault.create_secret('[redacted]', '[redacted]', '[redacted]')",
        "execute s",
        "parameters redacted by secret_vault",
        // The extension's own errors name existing objects as they are.
        "secret \"lr/b\" already exists",
        "secret does not exist",
        "invalid input syntax for type integer: \"[redacted]\"",
        "function vault.create_secret(unknown, unknown, unknown, unknown, unknown) does not exist",
        "permission denied for schema vault",
        "permission denied for function create_secret",
        "SQL statement \"SELECT vault.create_secret('[redacted]', '[redacted]')\"",
        "prepare: PREPARE lr_q AS SELECT vault.verify_secret('[redacted]', '[redacted]')",
        "statement: SELECT 'unrelated-literal-' || 42",
    ] {
        assert!(log.contains(expected), "{expected:?} is not in the server log:\n{log}");
    }
    assert!(
        standby.log().contains("cannot create a secret while the server is in recovery"),
        "{}",
        standby.log()
    );
}

#[test]
fn with_default_logging_failing_vault_calls_log_their_errors_without_the_sentinel_or_the_statement() {
    let s = sentinel();
    let c = Cluster::start_with("logredact-default", &[]);
    let mut db = c.client();
    setup(&mut db, &s);
    calls_that_succeed(&mut db, &s);
    prepare_failing_statements(&mut db, &s);
    calls_that_fail(&mut db, &s);
    calls_through_wrappers(&mut db, &s);
    assert_not_in_log(&c, &s, "");

    let log = c.log();
    assert!(log.contains("ERROR:  secret does not exist"), "{log}");
    // The wrapper's failure after a vault call: redacted, and no STATEMENT
    // line, though its text never names the vault.
    assert!(log.contains("ERROR:  invalid input syntax for type integer: \"[redacted]\""), "{log}");
    let statements: Vec<&str> = log.lines().filter(|l| l.contains("STATEMENT:")).collect();
    assert!(statements.is_empty(), "a vault call's statement was logged:\n{}", statements.join("\n"));
}

#[test]
fn with_redaction_turned_off_by_a_superuser_the_sentinel_reaches_the_log() {
    let c = Cluster::start_with("logredact-off", &["log_statement = 'all'"]);
    let mut su = c.client();
    su.batch_execute("CREATE ROLE lr_user LOGIN").unwrap();
    let while_on = sentinel();
    su.batch_execute(&format!("SELECT vault.create_secret('lr/on', '{while_on}')")).unwrap();

    // Only a superuser may turn it off, even for one session.
    let mut user = connect_as(&c, "lr_user");
    let e = user.batch_execute("SET secret_vault.redact_server_log = off").unwrap_err();
    assert_eq!(db_error(&e).0, "42501");

    su.batch_execute("ALTER SYSTEM SET secret_vault.redact_server_log = off").unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut db = c.client();
    assert!(eventually(Duration::from_secs(10), || {
        db.query_one("SHOW secret_vault.redact_server_log", &[]).unwrap().get::<_, String>(0) == "off"
    }));
    let while_off = sentinel();
    db.batch_execute(&format!("SELECT vault.verify_secret('lr/on', '{while_off}')")).unwrap();
    let e = db.batch_execute(&format!("SELECT vault.read_secret('{while_off}')")).unwrap_err();
    assert_eq!(db_error(&e).1, "secret does not exist");
    assert!(
        eventually(Duration::from_secs(5), || c.log().contains(&format!("statement: SELECT vault.read_secret('{while_off}')"))),
        "with redaction off the statement is logged as sent:\n{}",
        c.log()
    );
    assert!(c.log().contains(&format!("STATEMENT:  SELECT vault.read_secret('{while_off}')")));
    assert_not_in_log(&c, &while_on, "(while redaction was on)");
}


/// auto_explain logs each plan with its query text and, from PostgreSQL 16
/// on, its bound values (`Query Parameters: $1 = '\x...'`), where a bytea
/// prints as hex and a quote doubled: none of it may carry a value, in any
/// output format, with VERBOSE plans (constants folded in) too.
#[test]
fn auto_explain_plans_of_vault_calls_carry_no_value_in_any_format() {
    let s = sentinel();
    let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
    let c = Cluster::start_with(
        "logredact-explain",
        &[
            "shared_preload_libraries = 'secret_vault,auto_explain'",
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_verbose = on",
            "auto_explain.log_nested_statements = on",
        ],
    );
    let mut db = c.client();
    db.batch_execute("SELECT vault.create_group('lr/col', 'encrypt')").unwrap();
    let quoted = format!("it's {s}");
    for format in ["text", "json", "yaml", "xml"] {
        db.batch_execute(&format!("SET auto_explain.log_format = {format}")).unwrap();
        let ct: Vec<u8> = db
            .query_one("SELECT vault.encrypt($1, $2::bytea)", &[&"lr/col", &s.as_bytes()])
            .unwrap()
            .get(0);
        db.query_one("SELECT vault.decrypt('lr/col', $1)", &[&ct]).unwrap();
        db.query_one("SELECT vault.encrypt('lr/col', convert_to($1, 'UTF8'))", &[&quoted]).unwrap();
        db.batch_execute(&format!("SELECT vault.create_secret('lr/{format}', $v${s}$v$)")).unwrap();
    }
    let log = c.log();
    assert!(log.contains("Query Text"), "auto_explain logged plans:\n{log}");
    if secret_vault_it::pg_major() >= 16 {
        assert!(log.contains("Query Parameters") || log.contains("Query-Parameters"), "plans list their parameters from 16 on");
    }
    assert_not_in_log(&c, &s, "auto_explain");
    assert!(!log.contains(&hex), "the sentinel's hex reached the log");
    assert!(!log.contains(&s.to_lowercase()), "the sentinel (lower case) reached the log");
}
