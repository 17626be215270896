use super::*;

fn class(sql: &str) -> Class {
    classify(sql.as_bytes())
}

fn kind(sql: &str) -> Kind {
    class(sql).kind
}

#[test]
fn the_harmless_list_is_sorted_for_its_binary_search() {
    assert!(HARMLESS.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn plain_reads_are_reads() {
    for sql in [
        "SELECT 1",
        "select * from t where id = 5",
        "  /* a comment */ SELECT c FROM t -- trailing\n",
        "# hash comment\nSELECT 1;",
        "SELECT COUNT(*), MAX(id), CONCAT(a, 'x') FROM t WHERE id IN (1, 2) AND EXISTS (SELECT 1)",
        "SELECT NOW(), DATE_FORMAT(d, '%Y'), JSON_EXTRACT(j, '$.a'), @@version, @@session.sql_mode",
        "(SELECT 1) UNION (SELECT 2)",
        "WITH c AS (SELECT 1) SELECT * FROM c",
        "SELECT a FROM t FORCE INDEX (i) JOIN u USING (k)",
        "SELECT 'UPDATE t SET x = 1; INSERT', `col` FROM t",
        "SHOW TABLES",
        "show full columns from t",
        "SHOW CREATE TABLE t",
        "DESCRIBE t",
        "EXPLAIN SELECT * FROM t",
        "SELECT @x",
        "VALUES (1), (2)",
    ] {
        assert_eq!(kind(sql), Kind::Read, "{sql}");
        assert_eq!(class(sql).pin, None, "{sql}");
    }
}

#[test]
fn anything_else_is_a_write() {
    for sql in [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "REPLACE INTO t VALUES (1)",
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT * FROM t INTO OUTFILE '/tmp/x'",
        "SELECT NEXTVAL(s)",
        "SELECT NEXT VALUE FOR s",
        "SELECT LAST_INSERT_ID(5)",
        "SELECT RELEASE_LOCK('x')",
        "SELECT CONNECTION_ID()",
        "SELECT my_function(1)",
        "SELECT db.f()",
        "SELECT `f`(1)",
        "CALL p()",
        "LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
        "DO 1",
        "SHOW MASTER STATUS",
        "SHOW PROCESSLIST",
        "EXPLAIN ANALYZE SELECT 1",
        "ANALYZE SELECT 1",
        "WITH c AS (SELECT 1) UPDATE t, c SET t.a = 1",
        "SELECT 1; SELECT 2",
        "SET GLOBAL max_connections = 10",
        "SET @@global.sql_mode = ''",
        "SET PASSWORD = PASSWORD('x')",
        "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
        "SET sql_mode = my_function()",
        "SELECT 1 /*! , 2 */",
        "SELECT 'a\\'",
        "",
        "HELP 'x'",
        "FLUSH TABLES",
    ] {
        assert_eq!(kind(sql), Kind::Write, "{sql}");
    }
}

#[test]
fn session_state_is_told_apart() {
    for sql in [
        "SET NAMES utf8mb4",
        "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        "SET CHARACTER SET latin1",
        "SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'",
        "SET @@session.time_zone = '+00:00', @@sql_mode = CONCAT(@@sql_mode, ',ANSI')",
        "set time_zone='+01:00'",
        "SET LOCAL wait_timeout = 100",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "USE shop",
    ] {
        assert_eq!(kind(sql), Kind::Session, "{sql}");
        assert_eq!(class(sql).pin, None, "{sql}");
    }
}

#[test]
fn autocommit_and_transactions() {
    use Transaction::*;
    let tx = |sql: &str| class(sql).transaction;
    assert_eq!(tx("SET autocommit = 0"), Some(Autocommit(false)));
    assert_eq!(tx("SET autocommit=1"), Some(Autocommit(true)));
    assert_eq!(tx("set @@autocommit := OFF"), Some(Autocommit(false)));
    assert_eq!(
        tx("SET SESSION autocommit = ON, sql_mode = ''"),
        Some(Autocommit(true))
    );
    assert_eq!(kind("SET autocommit = 0"), Kind::Session);
    // A value it cannot read: the writer's, no claim about the mode.
    assert_eq!(class("SET autocommit = @x").transaction, None);
    assert_eq!(kind("SET autocommit = @x"), Kind::Write);
    assert_eq!(tx("BEGIN"), Some(Begin { read_only: false }));
    assert_eq!(tx("begin work"), Some(Begin { read_only: false }));
    assert_eq!(tx("START TRANSACTION"), Some(Begin { read_only: false }));
    assert_eq!(
        tx("START TRANSACTION READ ONLY"),
        Some(Begin { read_only: true })
    );
    assert_eq!(
        tx("start transaction with consistent snapshot, read only"),
        Some(Begin { read_only: true })
    );
    assert_eq!(tx("BEGIN NOT ATOMIC SELECT 1; END"), None);
    assert_eq!(tx("COMMIT"), Some(End));
    assert_eq!(tx("ROLLBACK"), Some(End));
    assert_eq!(tx("ROLLBACK TO SAVEPOINT a"), None);
    assert_eq!(tx("SAVEPOINT a"), None);
    for ddl in [
        "CREATE TABLE t (a INT)",
        "ALTER TABLE t ADD b INT",
        "DROP TABLE t",
        "TRUNCATE TABLE t",
        "RENAME TABLE a TO b",
        "GRANT SELECT ON *.* TO u",
        "LOCK TABLES t WRITE",
        "UNLOCK TABLES",
    ] {
        assert_eq!(tx(ddl), Some(ImplicitCommit), "{ddl}");
        assert_eq!(kind(ddl), Kind::Write, "{ddl}");
    }
    // Temporary tables commit nothing.
    assert_eq!(tx("CREATE TEMPORARY TABLE t (a INT)"), None);
    assert_eq!(tx("DROP TEMPORARY TABLE t"), None);
    // Several statements: the last transaction control counts.
    assert_eq!(tx("INSERT INTO t VALUES (1); COMMIT"), Some(End));
    assert!(class("INSERT INTO t VALUES (1); COMMIT").multi);
}

#[test]
fn state_that_cannot_move_pins() {
    use Pin::*;
    for (sql, pin) in [
        ("CREATE TEMPORARY TABLE t (a INT)", TemporaryTable),
        (
            "create or replace temporary table t select 1",
            TemporaryTable,
        ),
        ("SET @x = 1", UserVariable),
        ("SET @`odd name` = 1", UserVariable),
        ("SET sql_mode = '', @y = 2", UserVariable),
        ("SELECT @x := id FROM t", UserVariable),
        ("SELECT id INTO @x FROM t", UserVariable),
        ("SELECT GET_LOCK('a', 1)", Lock),
        ("DO GET_LOCK('a', 1)", Lock),
        ("LOCK TABLES t READ", LockTables),
        ("PREPARE s FROM 'SELECT 1'", Prepare),
        ("EXECUTE s", Prepare),
        ("DEALLOCATE PREPARE s", Prepare),
        ("DROP PREPARE s", Prepare),
        ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", FoundRows),
        ("HANDLER t OPEN", Handler),
        ("SELECT 1; SET @x = 1", UserVariable),
    ] {
        assert_eq!(class(sql).pin, Some(pin), "{sql}");
        assert_eq!(kind(sql), Kind::Write, "{sql}");
    }
    // Reading a user variable pins nothing.
    assert_eq!(class("SELECT @x").pin, None);
}

#[test]
fn reads_of_the_previous_statements_outcome() {
    for sql in [
        "SHOW WARNINGS",
        "show errors",
        "SHOW COUNT(*) WARNINGS",
        "SELECT FOUND_ROWS()",
        "SELECT ROW_COUNT()",
        "GET DIAGNOSTICS @n = NUMBER",
        "GET CURRENT DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT",
    ] {
        assert!(class(sql).reads_previous, "{sql}");
    }
    for sql in ["SELECT LAST_INSERT_ID(5)", "SELECT 1", "SHOW TABLES"] {
        assert!(!class(sql).reads_previous, "{sql}");
    }
    // They go where the previous statement ran, which may be a reader.
    assert_eq!(kind("SHOW WARNINGS"), Kind::Read);
    assert_eq!(kind("SELECT FOUND_ROWS()"), Kind::Read);
    // What the last write set, whenever it ran, is the writer's.
    for sql in [
        "SELECT LAST_INSERT_ID()",
        "select last_insert_id ( )",
        "SELECT LASTVAL(s)",
        "SELECT PREVIOUS VALUE FOR s",
    ] {
        assert_eq!(kind(sql), Kind::Write, "{sql}");
        assert!(!class(sql).reads_previous, "{sql}");
    }
}

#[test]
fn never_panics_on_odd_text() {
    for sql in [
        &b"@"[..],
        b"@@",
        b"@'",
        b"SET",
        b"SET ,",
        b"SET autocommit",
        b"SET autocommit =",
        b"SHOW",
        b"START",
        b"(",
        b"\xff\xfe",
        b"SELECT a(",
        b"SELECT x INTO",
        b"GET",
        b"-- ",
        b"/* */",
    ] {
        let _ = classify(sql);
    }
    let long = format!("SELECT {}(1)", "f".repeat(100));
    assert_eq!(kind(&long), Kind::Write);
}
