//! `runnel auth credentials …`: API credentials for people, so they act with less than owner.

use anyhow::Result;
use serde_json::json;

use crate::cli::{AuthCmd, CredentialsCmd};
use crate::client::Client;
use crate::home::write_private;
use crate::output::{Column, Format, last, print_list, s};

pub async fn auth(client: &Client, format: Format, cmd: AuthCmd) -> Result<()> {
    let cmd = match cmd {
        AuthCmd::Credentials(c) => c,
        AuthCmd::PrintIdentityToken { audiences, impersonate_service_account } => {
            let body = serde_json::json!({ "audience": audiences });
            let v = match impersonate_service_account {
                Some(sa) => {
                    let email =
                        if sa.contains('@') { sa } else { format!("{sa}@{}.iam.gserviceaccount.com", client.project) };
                    client
                        .post(
                            &format!("/v1/projects/{}/serviceAccounts/{email}:generateIdToken", client.project),
                            &body,
                        )
                        .await?
                }
                None => client.post(&format!("/runnel/v1/projects/{}/idToken", client.project), &body).await?,
            };
            println!("{}", s(&v["token"]));
            return Ok(());
        }
        AuthCmd::PrintAccessToken { impersonate_service_account } => {
            let v = match impersonate_service_account {
                Some(sa) => {
                    let email =
                        if sa.contains('@') { sa } else { format!("{sa}@{}.iam.gserviceaccount.com", client.project) };
                    client
                        .post(&format!("/v1/projects/-/serviceAccounts/{email}:generateAccessToken"), &json!({}))
                        .await?
                }
                None => client.post(&format!("/runnel/v1/projects/{}/accessToken", client.project), &json!({})).await?,
            };
            println!("{}", s(&v["accessToken"]));
            return Ok(());
        }
    };
    let base = format!("/runnel/v1/projects/{}/credentials", client.project);
    match cmd {
        CredentialsCmd::Create { member, description, output_file } => {
            let v = client
                .post(&base, &json!({ "member": member, "description": description.unwrap_or_default() }))
                .await?;
            let secret = s(&v["secret"]);
            match output_file {
                Some(f) => {
                    write_private(&f, format!("{secret}\n").as_bytes())?;
                    eprintln!(
                        "Created credential [{}] for {member}; the secret is in {} (mode 0600).",
                        last(&v["name"]),
                        f.display()
                    );
                }
                None => {
                    eprintln!(
                        "Created credential [{}] for {member}. This secret is shown once; give it to them privately:",
                        last(&v["name"])
                    );
                    println!("{secret}");
                }
            }
            Ok(())
        }
        CredentialsCmd::List => {
            let v = client.get(&base).await?;
            let items = v["credentials"].as_array().cloned().unwrap_or_default();
            let columns = vec![
                Column { header: "ID", cell: |v| last(&v["name"]) },
                Column { header: "MEMBER", cell: |v| s(&v["member"]) },
                Column { header: "CREATED", cell: |v| s(&v["createTime"]) },
                Column { header: "DESCRIPTION", cell: |v| s(&v["description"]) },
            ];
            print_list(format, &items, &columns)
        }
        CredentialsCmd::Revoke { id } => {
            client.delete(&format!("{base}/{id}")).await?;
            eprintln!("Revoked credential [{id}].");
            Ok(())
        }
    }
}
