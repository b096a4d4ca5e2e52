//! `corral template`: the templates (disk images with an OS preinstalled) VMs are made from.

use anyhow::Result;
use clap::Subcommand;

use corral_api::Template;

use crate::client::Client;
use crate::output::{self, print, Output};

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates.
    List,
}

pub async fn template(cmd: TemplateCmd, c: &Client, o: Output) -> Result<()> {
    match cmd {
        TemplateCmd::List => {
            print(o, &c.get::<Vec<Template>>("/v1/templates").await?, |t| output::templates(t))?;
        }
    }
    Ok(())
}
