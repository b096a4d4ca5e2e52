//! `corral image` (alias `template`): the image library VMs are made from: list and show it,
//! import a disk image or OVA into it from a file or an http(s) URL (streamed to the
//! controller with a progress bar, see [`source`]), export one, delete one.

mod source;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;

use corral_api::{ErrorBody, Template};

use crate::client::Client;
use crate::output::{self, print, Output};
use source::{Source, SourceUrl};

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List the images.
    List,
    /// Show one image.
    Show { name: String },
    /// Import a disk image (qcow2, raw, vmdk, vhdx, vpc, vdi) or an OVA into the library, from
    /// a file or an http(s) URL.
    ///
    /// The controller checks it (size, --sha256, format, corruption, no other files opened)
    /// and converts it to qcow2; a refused or failed import leaves nothing in the library. An
    /// OVA's first disk is imported, and its OVF's vCPUs, memory and firmware become the
    /// image's defaults (an OVF with EFI firmware boots uefi unless --boot says otherwise).
    #[command(after_help = "Examples:\n  corral image import debian ./debian-12.qcow2 --boot uefi\n  \
        corral image import noble --from-url https://HOST/noble-server-cloudimg-amd64.img --sha256 HEX\n  \
        corral image import appliance ./appliance.ova")]
    #[command(
        group(clap::ArgGroup::new("source").required(true).args(["file", "from_url"])),
        override_usage = "corral image import [OPTIONS] <NAME> <FILE | --from-url URL>"
    )]
    Import {
        name: String,
        /// The disk image or OVA file to upload.
        file: Option<PathBuf>,
        /// Download it from this http:// or https:// URL instead, streamed straight to the
        /// controller (nothing is written here). (`--url` is the controller's address.)
        #[arg(long, value_name = "URL")]
        from_url: Option<SourceUrl>,
        /// With --from-url: give up when the server sends nothing for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
        stall_timeout: u64,
        /// Its format: qcow2, raw, vmdk, vhdx, vpc, vdi or ova (default: probed).
        #[arg(long)]
        format: Option<String>,
        /// How it boots: bios or uefi (default: an OVA's firmware, else bios).
        #[arg(long)]
        boot: Option<String>,
        /// Every firmware it boots under, comma-separated (e.g. bios,uefi; default: --boot's).
        #[arg(long)]
        firmware: Option<String>,
        /// The agent in its guests: qemu, none or corral.
        #[arg(long, default_value = "qemu")]
        guest_agent: String,
        /// The file's SHA-256: the import is refused if it differs.
        #[arg(long)]
        sha256: Option<String>,
        /// What it is, shown in lists (e.g. "Debian 12").
        #[arg(long)]
        os: Option<String>,
        /// The user cloud-init makes in its guests (e.g. debian, ubuntu): `vm ssh` logs in
        /// as it unless told otherwise.
        #[arg(long)]
        default_user: Option<String>,
    },
    /// Write an image's disk (qcow2) to a file.
    Export { name: String, out: PathBuf },
    /// Delete an image (refused while VMs use it).
    Delete { name: String },
}

pub async fn template(cmd: TemplateCmd, c: &Client, o: Output) -> Result<()> {
    match cmd {
        TemplateCmd::List => {
            print(o, &c.get::<Vec<Template>>("/v1/images").await?, |t| output::templates(t))?;
        }
        TemplateCmd::Show { name } => {
            let name = crate::name_arg("image", &name)?;
            print(o, &c.get::<Template>(&format!("/v1/images/{name}")).await?, |t| {
                output::templates(std::slice::from_ref(t))
            })?;
        }
        TemplateCmd::Import {
            name,
            file,
            from_url,
            stall_timeout,
            format,
            boot,
            firmware,
            guest_agent,
            sha256,
            os,
            default_user,
        } => {
            let name = crate::name_arg("image", &name)?;
            // Checked here as the controller checks them, so a typo costs no upload.
            let mut q = corral_api::image::ImportImage {
                format: format.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?,
                boot: boot.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?,
                firmware: firmware.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?,
                guest_agent: Some(guest_agent.parse().map_err(anyhow::Error::msg)?),
                sha256: sha256
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!("--sha256: {e}"))?,
                os: os.as_deref().map(str::parse).transpose().map_err(|e: String| anyhow::anyhow!("--os: {e}"))?,
                size: None,
                default_user: default_user
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!("--default-user: {e}"))?,
            };
            if q.boot == Some(corral_api::image::Boot::Direct) {
                bail!("--boot direct needs a kernel and an initrd, which an import does not carry: use bios or uefi");
            }
            let (leader, have) = raw(c).await?;
            if have.iter().any(|t| t.name == name.as_str()) {
                bail!("the library already has an image {name:?}: delete it first or choose another name");
            }
            if q.os.is_none() {
                q.os = Some(corral_api::image::Label(name.to_string()));
            }
            let src = match (&file, &from_url) {
                (Some(f), _) => source::file(f).await?,
                (None, Some(u)) => source::url(u, Duration::from_secs(stall_timeout)).await?,
                (None, None) => bail!("give the image's FILE or --from-url URL"),
            };
            let t = upload(c, &leader, name.as_str(), src, &q, o == Output::Table).await?;
            print(o, &t, |t| output::templates(std::slice::from_ref(t)))?;
        }
        TemplateCmd::Export { name, out } => {
            let name = crate::name_arg("image", &name)?;
            download(c, name.as_str(), &out).await?;
            eprintln!("image {name} written to {}", out.display());
        }
        TemplateCmd::Delete { name } => {
            let name = crate::name_arg("image", &name)?;
            c.delete::<serde_json::Value>(&format!("/v1/images/{name}")).await?;
            eprintln!("image {name} deleted");
        }
    }
    Ok(())
}

/// An HTTP client and the leading controller's URL, for transfers made outside the JSON
/// client, and the library's images (listing them is how the leader is found).
async fn raw(c: &Client) -> Result<((reqwest::Client, String), Vec<Template>)> {
    let images: Vec<Template> = c.get("/v1/images").await?;
    let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5)).build()?;
    Ok(((http, c.leader()), images))
}

async fn refused(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    match resp.json::<ErrorBody>().await {
        Ok(b) => anyhow::anyhow!("{}", b.error),
        Err(_) => anyhow::anyhow!("the controller answered {status}"),
    }
}

/// Streams `src` as the body of the import of `name`, with a progress bar when `bar`.
async fn upload(
    c: &Client,
    (http, base): &(reqwest::Client, String),
    name: &str,
    src: Source,
    q: &corral_api::image::ImportImage,
    bar: bool,
) -> Result<Template> {
    let pb = match (bar, src.len) {
        (false, _) => indicatif::ProgressBar::hidden(),
        (true, Some(n)) => indicatif::ProgressBar::new(n),
        (true, None) => indicatif::ProgressBar::new_spinner(),
    };
    let style = if src.len.is_some() {
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(style).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(format!("importing {name}"));
    let counted = pb.clone();
    let Source { what, len, body, failed } = src;
    let stream = body.inspect(move |chunk| {
        if let Ok(b) = chunk {
            counted.inc(b.len() as u64);
        }
    });
    // The size goes with it, so the controller refuses a too large image before it comes.
    let q = corral_api::image::ImportImage { size: len, ..q.clone() };
    let mut req = http
        .put(format!("{}/v1/images/{name}", base.trim_end_matches('/')))
        .query(&q)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(n) = len {
        req = req.header("content-length", n);
    }
    if let Some(t) = c.token() {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await;
    pb.finish_and_clear();
    // The source's own failure says more than the controller's view of a cut upload.
    if let Some(why) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!("{why}");
    }
    let resp = resp.with_context(|| format!("the upload of {what} to the controller failed"))?;
    if !resp.status().is_success() {
        return Err(refused(resp).await);
    }
    Ok(resp.json().await?)
}

async fn download(c: &Client, name: &str, out: &PathBuf) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    if out.exists() {
        bail!("{} exists: choose another file or remove it", out.display());
    }
    let ((http, base), _) = raw(c).await?;
    let mut req = http.get(format!("{}/v1/templates/{name}/files/disk", base.trim_end_matches('/')));
    if let Some(t) = c.token() {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        return Err(refused(resp).await);
    }
    let tmp = out.with_extension("partial");
    let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        f.write_all(&chunk?).await?;
    }
    f.sync_all().await?;
    tokio::fs::rename(&tmp, out).await?;
    Ok(())
}
