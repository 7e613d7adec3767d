//! The `sycri` command line.

use crate::config::{CgroupDriver, Config, DEFAULT_CONFIG_FILE};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// A Kubernetes CRI runtime that runs Singularity (SIF) images with its own engine.
#[derive(Parser, Debug)]
#[command(name = "sycri", version, about)]
pub struct Args {
    /// Config file (TOML). Flags override its values.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CRI socket, e.g. unix:///var/run/singularity.sock.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Image storage directory (default /var/lib/singularity).
    #[arg(long, value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,
    /// Persistent pod and container state (default <storage-dir>/state).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Volatile run directory (default /var/run/singularity).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Cgroup driver reported to the kubelet (only cgroupfs is built: the
    /// server refuses to start with systemd).
    #[arg(long, value_enum)]
    pub cgroup_driver: Option<CliCgroupDriver>,
    /// Cgroup group for containers whose pod names no cgroup parent
    /// (default sycri), relative to each hierarchy's root.
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<String>,
    /// Streaming server address for exec, attach and port-forward (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    pub stream_address: Option<String>,
    /// CNI network config directory (default /etc/cni/net.d).
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory; repeat for several (default /opt/cni/bin, /usr/lib/cni).
    #[arg(long = "cni-bin-dir", value_name = "DIR")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Binary that runs the helpers: a sycri-engine from the same build
    /// (default: sycri-engine beside sycri when it matches, else sycri itself).
    #[arg(long, value_name = "PATH")]
    pub engine_binary: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CliCgroupDriver {
    Cgroupfs,
    Systemd,
}

impl Args {
    pub fn into_config(self) -> Result<(Config, bool), String> {
        let (path, must_exist) = match self.config {
            Some(p) => (p, true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let mut c = Config::load(&path, must_exist).map_err(|e| e.to_string())?;
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.storage_dir {
            c.storage_dir = v;
        }
        if let Some(v) = self.state_dir {
            c.state_dir = Some(v);
        }
        if let Some(v) = self.run_dir {
            c.run_dir = v;
        }
        if let Some(v) = self.log_level {
            c.log_level = v;
        }
        if let Some(v) = self.cgroup_driver {
            c.cgroup_driver = match v {
                CliCgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
                CliCgroupDriver::Systemd => CgroupDriver::Systemd,
            };
        }
        if let Some(v) = self.cgroup_parent {
            c.cgroup_parent = v;
        }
        if let Some(v) = self.stream_address {
            c.stream_address = v;
        }
        if let Some(v) = self.cni_conf_dir {
            c.cni_conf_dir = v;
        }
        if let Some(v) = self.engine_binary {
            c.engine_binary = Some(v);
        }
        if !self.cni_bin_dirs.is_empty() {
            c.cni_bin_dirs = self.cni_bin_dirs;
        }
        c.socket_path().map_err(|e| e.to_string())?;
        Ok((c, self.print_config))
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let (config, print) = match args.into_config() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sycri: {e}");
            return ExitCode::from(2);
        }
    };
    if print {
        match toml::to_string_pretty(&config) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("sycri: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sycri: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sycri: {e}");
            ExitCode::FAILURE
        }
    }
}
