// MariaDB Connector/J (Debian's libmariadb-java) through Switchyard, for
// tests/tests/compat.rs. Run as a single-file program:
//   java -cp /usr/share/java/mariadb-java-client.jar ConnectorJClient.java
// Reads its settings from COMPAT_* environment variables (see
// tests/tests/compat.rs) and prints one JSON line per scenario:
// {"scenario": ..., "status": "ok" | "fail" | "na", "detail": ...}.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public class ConnectorJClient {
    static final Map<String, String> E = System.getenv();
    static final String HOST = E.get("COMPAT_HOST");
    static final int PORT = Integer.parseInt(E.get("COMPAT_PORT"));
    static final String USER = E.get("COMPAT_USER");
    static final String PASSWORD = E.get("COMPAT_PASSWORD");
    static final String DB = E.get("COMPAT_DB");
    // off: the client's defaults; required: TLS with the server's
    // certificate verified against COMPAT_CA; disabled: TLS explicitly off.
    static final String TLS_MODE = E.getOrDefault("COMPAT_TLS", "off");
    static final boolean TLS = TLS_MODE.equals("required");

    interface Step {
        void run() throws Exception;
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
                    else b.append(ch);
            }
        }
        return b.append('"').toString();
    }

    static void report(String scenario, String status, String detail, Integer code, String note) {
        System.out.println("{\"scenario\":" + json(scenario) + ",\"status\":" + json(status)
            + ",\"detail\":" + json(detail) + (code == null ? "" : ",\"code\":" + code)
            + (note == null ? "" : ",\"note\":" + json(note)) + "}");
        System.out.flush();
    }

    static void report(String scenario, String status, String detail, Integer code) {
        report(scenario, status, detail, code, null);
    }

    static void report(String scenario, String status, String detail) {
        report(scenario, status, detail, null);
    }

    static Connection connect(String password, String tls, int port, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", USER);
        p.setProperty("password", password);
        if (tls.equals("required")) {
            // useSsl refuses a server without TLS; serverSslCert is the CA
            // the certificate (and its host name) is checked against.
            p.setProperty("useSsl", "true");
            p.setProperty("serverSslCert", E.get("COMPAT_CA"));
        } else if (tls.equals("disabled")) {
            p.setProperty("useSsl", "false");
        }
        p.putAll(extra);
        return DriverManager.getConnection("jdbc:mariadb://" + HOST + ":" + port + "/" + DB, p);
    }

    static Connection connect(String password, String tls, int port) throws SQLException {
        return connect(password, tls, port, new Properties());
    }

    static Connection connect() throws SQLException {
        return connect(PASSWORD, TLS_MODE, PORT);
    }

    static void expectDenied(String scenario, String password, String tls) {
        try (Connection c = connect(password, tls, PORT)) {
            report(scenario, "fail", "login succeeded");
        } catch (SQLException e) {
            report(scenario, e.getErrorCode() == 1045 ? "ok" : "fail", e.getMessage(), e.getErrorCode());
        }
    }

    static List<String> row(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            List<String> out = new ArrayList<>();
            if (rs.next()) {
                for (int i = 1; i <= rs.getMetaData().getColumnCount(); i++) out.add(rs.getString(i));
            }
            return out;
        }
    }

    static List<String> preparedRuns(Connection c) throws SQLException {
        List<String> got = new ArrayList<>();
        try (PreparedStatement ps = c.prepareStatement("SELECT ? * 2, CONCAT('<', ?, '>')")) {
            Object[][] cases = {{21, "héllo"}, {50, "wörld"}};
            for (Object[] p : cases) {
                ps.setInt(1, (Integer) p[0]);
                ps.setString(2, (String) p[1]);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    got.add(rs.getLong(1) + " " + rs.getString(2));
                }
            }
        }
        return got;
    }

    static Connection conn;

    /// Runs SELECT SLEEP(20) and cancels it from another thread once it
    /// runs; null if it was interrupted within 10 s, else what happened.
    static String cancelSleep() throws Exception {
        try (Statement st = conn.createStatement()) {
            long started = System.nanoTime();
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(1000);
                    st.cancel();
                } catch (Exception e) {
                    e.printStackTrace();
                }
            });
            canceller.start();
            String outcome;
            try (ResultSet rs = st.executeQuery("SELECT SLEEP(20)")) {
                rs.next();
                // MariaDB may end an interrupted SLEEP with 1 instead.
                outcome = rs.getInt(1) == 1 ? null : "SLEEP ran to its end";
            } catch (SQLException e) {
                outcome = e.getErrorCode() == 1317 ? null : "SLEEP failed: " + e;
            }
            canceller.join();
            double secs = (System.nanoTime() - started) / 1e9;
            if (outcome == null && secs > 10) {
                outcome = "cancel took " + secs + " s";
            }
            return outcome;
        }
    }

    static void suite() {
        String table = "`" + DB + "`.`" + E.get("COMPAT_TABLE") + "`";
        List<Map.Entry<String, Step>> steps = new ArrayList<>();
        steps.add(Map.entry("connect", () -> {
            conn = connect();
            report("connect", "ok", "server " + conn.getMetaData().getDatabaseProductVersion()
                + ", driver " + conn.getMetaData().getDriverVersion());
        }));
        steps.add(Map.entry("tls", () -> {
            if (!TLS) {
                report("tls", "na", "plaintext run");
                return;
            }
            // The driver reports no cipher: check that the same settings
            // refuse a server without TLS.
            try (Connection p = connect(PASSWORD, "required", Integer.parseInt(E.get("COMPAT_PLAIN_PORT")))) {
                report("tls", "fail", "the TLS settings also logged in to a server without TLS");
            } catch (SQLException e) {
                report("tls", "ok", "no cipher report in the driver; the same settings refuse a server without TLS: "
                    + e.getMessage());
            }
        }));
        steps.add(Map.entry("query", () -> {
            List<String> r = row(conn, "SELECT @@server_id, 1+1, DATABASE()");
            boolean ok = r.equals(List.of(E.get("COMPAT_SERVER_ID"), "2", DB));
            if (!ok) {
                report("query", "fail", r.toString());
                return;
            }
            // Statement.cancel() sends KILL QUERY <the greeting's connection
            // id> on a connection of its own: Switchyard translates the id.
            String cancelled = cancelSleep();
            report("query", cancelled == null ? "ok" : "fail",
                r + (cancelled == null ? "; Statement.cancel() interrupted a running SLEEP" : "; " + cancelled),
                null, "also Statement.cancel() (KILL QUERY with the greeting's connection id)");
        }));
        steps.add(Map.entry("prepared", () -> {
            List<String> want = List.of("42 <héllo>", "100 <wörld>");
            // By default Connector/J 2.x prepares client-side
            // (useServerPrepStmts=false): check that, then server-side
            // ones on a second connection.
            List<String> emulated = preparedRuns(conn);
            if (!emulated.equals(want)) {
                report("prepared", "fail", "client-side (default): " + emulated);
                return;
            }
            Properties server = new Properties();
            server.setProperty("useServerPrepStmts", "true");
            try (Connection s = connect(PASSWORD, TLS_MODE, PORT, server)) {
                List<String> got = preparedRuns(s);
                report("prepared", got.equals(want) ? "ok" : "fail", "server-side: " + got,
                    null, "server-side with useServerPrepStmts=true; Connector/J 2.x prepares client-side by"
                        + " default (checked too)");
            }
        }));
        steps.add(Map.entry("transaction", () -> {
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)")) {
                ps.setInt(1, 1);
                ps.setString(2, "rolled back");
                ps.executeUpdate();
                conn.rollback();
                String gone = row(conn, "SELECT COUNT(*) FROM " + table + " WHERE id = 1").get(0);
                ps.setInt(1, 2);
                ps.setString(2, "committed");
                ps.executeUpdate();
                conn.commit();
                List<String> kept = row(conn, "SELECT v FROM " + table + " WHERE id = 2");
                conn.setAutoCommit(true);
                boolean ok = gone.equals("0") && kept.equals(List.of("committed"));
                report("transaction", ok ? "ok" : "fail", "after rollback " + gone + " rows; after commit " + kept);
            }
        }));
        steps.add(Map.entry("big_value", () -> {
            int units = Integer.parseInt(E.get("COMPAT_BIG_UNITS"));
            String v = row(conn, "SELECT CONCAT(REPEAT('0123456789abcdef', " + units + "), 'END')").get(0);
            boolean ok = v.equals("0123456789abcdef".repeat(units) + "END");
            report("big_value", ok ? "ok" : "fail", v.length() + " bytes read" + (ok ? "" : ", content differs"));
        }));
        steps.add(Map.entry("disconnect", () -> {
            Connection c = conn;
            conn = null;
            c.close();
            report("disconnect", c.isClosed() ? "ok" : "fail", "close() returned; isClosed() " + c.isClosed());
        }));
        for (Map.Entry<String, Step> s : steps) {
            if (conn == null && !s.getKey().equals("connect")) {
                report(s.getKey(), "fail", "no connection");
                continue;
            }
            try {
                s.getValue().run();
            } catch (Exception e) {
                report(s.getKey(), "fail", e.toString());
                e.printStackTrace();
            }
        }
        expectDenied("bad_password", PASSWORD + "-wrong", TLS_MODE);
        if (TLS) {
            expectDenied("plaintext_refused", PASSWORD, "disabled");
        } else {
            report("plaintext_refused", "na", "plaintext run");
        }
    }

    static void login() {
        try (Connection c = connect()) {
            row(c, "SELECT 1");
            report("login", "ok", "logged in");
        } catch (SQLException e) {
            report("login", "fail", e.getMessage(), e.getErrorCode());
        }
    }

    public static void main(String[] args) {
        if (E.getOrDefault("COMPAT_ACTION", "suite").equals("login")) login();
        else suite();
    }
}
