//! The demo topology: a MariaDB primary on 127.0.0.1:13306 and two replicas
//! on 13307 and 13308, with the `mysqlmaster`/`mysqlslave` accounts, and
//! Switchyard on 127.0.0.1:6033 with `examples/switchyard.toml`. Ctrl-C
//! stops everything.

use std::process::Command;

use anyhow::{Context, Result};
use switchyard_e2e::{Topology, artifacts, spawn, workspace_root};

fn main() -> Result<()> {
    // Ctrl-C reaches the whole process group: Switchyard exits cleanly on
    // it, and this process stays to stop the servers and remove their files.
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let root = workspace_root();
    let artifacts = artifacts();
    eprintln!("starting MariaDB: primary 127.0.0.1:13306, replicas 13307 and 13308 ...");
    let topology = Topology::start(2, Some(&[13306, 13307, 13308]))
        .context("starting the demo topology (are ports 13306-13308 free?)")?;
    // The monitor account of `examples/switchyard.toml`, and the account
    // its split pool serves, with a table to write to (they replicate).
    topology.primary.sql(
        "CREATE USER 'monitor'@'127.0.0.1' IDENTIFIED BY 'monitorpass';
         GRANT SLAVE MONITOR ON *.* TO 'monitor'@'127.0.0.1';
         CREATE USER 'mysqlapp'@'%' IDENTIFIED BY 'apppass';
         GRANT ALL ON app.* TO 'mysqlapp'@'%';
         CREATE TABLE app.notes (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100));",
    );
    eprintln!(
        "replication is running (server_id 1 → 2, 3). Starting Switchyard on 127.0.0.1:6033.\n\
         Try:  mariadb -h 127.0.0.1 -P 6033 -u mysqlslave -pslavepass -e 'SELECT @@server_id'\n\
         \x20     mariadb -h 127.0.0.1 -P 6033 -u mysqlmaster -pmasterpass app\n\
         \x20     mariadb -h 127.0.0.1 -P 6033 -u mysqlapp -papppass app   (split: reads on replicas)\n\
         Ctrl-C stops Switchyard and the servers."
    );
    // The configuration holds password hashes: Switchyard warns about a
    // file others may read, and a checkout leaves it 0644 (git records no
    // more than the executable bit, so this changes nothing it tracks).
    let config = root.join("examples/switchyard.toml");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", config.display()))?;
    }
    let mut cmd = Command::new(&artifacts.switchyard);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .current_dir(&root);
    let mut proxy = spawn(cmd).context("starting switchyard")?;
    let status = proxy.wait()?;
    drop(topology);
    eprintln!("switchyard exited ({status}); servers stopped.");
    Ok(())
}
