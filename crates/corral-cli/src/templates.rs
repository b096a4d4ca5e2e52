//! `corral image` (alias `template`): the image library VMs are made from: list and show it,
//! import a disk image or OVA into it (streamed to the controller with a progress bar), export
//! one, delete one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;

use corral_api::{ErrorBody, Template};

use crate::client::Client;
use crate::output::{self, print, Output};

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List the images.
    List,
    /// Show one image.
    Show { name: String },
    /// Import a disk image (qcow2, raw, vmdk, vhdx, vpc, vdi) or an OVA file into the library.
    ///
    /// The controller checks it (size, --sha256, format, corruption, no other files opened)
    /// and converts it to qcow2; a refused import leaves nothing in the library. An OVA's first
    /// disk is imported, and its OVF's vCPUs, memory and firmware become the image's defaults
    /// (an OVF with EFI firmware boots uefi unless --boot says otherwise).
    Import {
        name: String,
        /// The disk image or OVA file to upload.
        file: PathBuf,
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
        TemplateCmd::Import { name, file, format, boot, firmware, guest_agent, sha256, os } => {
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
            let t = upload(c, &leader, name.as_str(), &file, &q, o == Output::Table).await?;
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

async fn upload(
    c: &Client,
    (http, base): &(reqwest::Client, String),
    name: &str,
    file: &PathBuf,
    q: &corral_api::image::ImportImage,
    bar: bool,
) -> Result<Template> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {} (give the path of a disk image or OVA file)", file.display()))?;
    let len = f.metadata().await?.len();
    // The size goes with it, so the controller refuses a too large image before it comes.
    let q = corral_api::image::ImportImage { size: Some(len), ..q.clone() };
    let pb = if bar { indicatif::ProgressBar::new(len) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(format!("uploading {name}"));
    let counted = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |chunk| {
        if let Ok(b) = chunk {
            counted.inc(b.len() as u64);
        }
    });
    let mut req = http
        .put(format!("{}/v1/images/{name}", base.trim_end_matches('/')))
        .query(&q)
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(t) = c.token() {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.context("the upload failed")?;
    pb.finish_and_clear();
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
