//! `corral ha`: which VMs a host failure would restart elsewhere and whether there is room for
//! them, and which controllers are up and which one leads.

use anyhow::Result;
use clap::Subcommand;

use crate::client::Client;
use crate::output::{self, print, Output};

#[derive(Debug, Subcommand)]
pub enum HaCmd {
    /// Protected and unprotected VMs, hosts down, spare capacity, lease.
    Status,
    /// Each controller of --url / CORRAL_URL: up or not, leading or standing by.
    Controllers,
}

pub async fn ha(cmd: HaCmd, c: &Client, o: Output) -> Result<()> {
    match cmd {
        HaCmd::Controllers => {
            let rows: Vec<serde_json::Value> = c
                .get_each("/v1/leader")
                .await
                .into_iter()
                .map(|(url, r)| match r {
                    Ok(v) => {
                        serde_json::json!({"url": url, "up": true, "leading": v["leading"], "leader": v["leader"]})
                    }
                    Err(e) => serde_json::json!({"url": url, "up": false, "leading": false, "error": e.to_string()}),
                })
                .collect();
            print(o, &rows, |rows| {
                output::table(
                    &["CONTROLLER", "STATE", "LEADER"],
                    rows.iter()
                        .map(|r| {
                            let state = if r["up"] != true {
                                "down".to_string()
                            } else if r["leading"] == true {
                                "leading".into()
                            } else {
                                "standby".into()
                            };
                            vec![
                                r["url"].as_str().unwrap_or("").into(),
                                state,
                                r["leader"].as_str().unwrap_or("-").into(),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        HaCmd::Status => {
            let st: corral_api::HaStatus = c.get("/v1/ha").await?;
            print(o, &st, output::ha)?;
        }
    }
    Ok(())
}
