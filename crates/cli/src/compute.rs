//! `runnel compute networks …`: networks, subnets and Serverless VPC Access connectors.

use anyhow::{Result, bail};
use serde_json::{Map, Value, json};

use crate::cli::{ComputeCmd, ConnectorsCmd, EndpointsCmd, NetworksCmd, SubnetsCmd, VpcAccessCmd};
use crate::client::Client;
use crate::output::{Column, Format, last, print_list, print_value, s};

pub async fn compute(client: &Client, format: Format, cmd: ComputeCmd) -> Result<()> {
    let ComputeCmd::Networks(cmd) = cmd;
    let p = client.project.clone();
    let region = client.region.clone();
    let networks = format!("/compute/v1/projects/{p}/global/networks");
    let subnets = format!("/compute/v1/projects/{p}/regions/{region}/subnetworks");
    let connectors = format!("/v1/projects/{p}/locations/{region}/connectors");
    match cmd {
        NetworksCmd::Create { name, subnet_mode, description } => {
            if subnet_mode != "custom" {
                bail!(
                    "subnet mode `{subnet_mode}` is not supported; runnel networks are custom mode: create subnets with `runnel compute networks subnets create`"
                );
            }
            let body =
                json!({ "name": name, "autoCreateSubnetworks": false, "description": description.unwrap_or_default() });
            client.post(&networks, &body).await?;
            eprintln!("Created [{networks}/{name}].");
            Ok(())
        }
        NetworksCmd::List => {
            let v = client.get(&networks).await?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let columns = vec![
                Column { header: "NAME", cell: |v| s(&v["name"]) },
                Column { header: "SUBNET_MODE", cell: |_| "CUSTOM".into() },
                Column {
                    header: "SUBNETS",
                    cell: |v| v["subnetworks"].as_array().map(|a| a.len()).unwrap_or(0).to_string(),
                },
            ];
            print_list(format, &items, &columns)
        }
        NetworksCmd::Describe { name } => print_value(format, &client.get(&format!("{networks}/{name}")).await?),
        NetworksCmd::Delete { name } => {
            client.delete(&format!("{networks}/{name}")).await?;
            eprintln!("Deleted [{networks}/{name}].");
            Ok(())
        }
        NetworksCmd::Subnets(SubnetsCmd::Create {
            name,
            network,
            range,
            enable_private_ip_google_access,
            description,
        }) => {
            let body = json!({
                "name": name, "network": network, "ipCidrRange": range,
                "privateIpGoogleAccess": enable_private_ip_google_access, "description": description.unwrap_or_default(),
            });
            client.post(&subnets, &body).await?;
            eprintln!("Created [{subnets}/{name}].");
            Ok(())
        }
        NetworksCmd::Subnets(SubnetsCmd::List { network }) => {
            let v = client.get(&format!("/compute/v1/projects/{p}/regions/-/subnetworks")).await?;
            let items: Vec<Value> = v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|i| network.as_ref().is_none_or(|n| last(&i["network"]) == *n))
                .collect();
            let columns = vec![
                Column { header: "NAME", cell: |v| s(&v["name"]) },
                Column { header: "REGION", cell: |v| last(&v["region"]) },
                Column { header: "NETWORK", cell: |v| last(&v["network"]) },
                Column { header: "RANGE", cell: |v| s(&v["ipCidrRange"]) },
                Column {
                    header: "PRIVATE_GOOGLE_ACCESS",
                    cell: |v| if v["privateIpGoogleAccess"] == true { "True".into() } else { "False".into() },
                },
            ];
            print_list(format, &items, &columns)
        }
        NetworksCmd::Subnets(SubnetsCmd::Describe { name }) => {
            print_value(format, &client.get(&format!("{subnets}/{name}")).await?)
        }
        NetworksCmd::Subnets(SubnetsCmd::Delete { name }) => {
            client.delete(&format!("{subnets}/{name}")).await?;
            eprintln!("Deleted [{subnets}/{name}].");
            Ok(())
        }
        NetworksCmd::Endpoints(cmd) => {
            let endpoints = format!("/compute/v1/projects/{p}/regions/{region}/endpoints");
            match cmd {
                EndpointsCmd::Create { name, network, subnet, address, target, description } => {
                    let body = json!({
                        "name": name, "network": network.unwrap_or_default(), "subnetwork": subnet,
                        "address": address, "target": target, "description": description.unwrap_or_default(),
                    });
                    client.post(&endpoints, &body).await?;
                    eprintln!("Created [{endpoints}/{name}].");
                    Ok(())
                }
                EndpointsCmd::List => {
                    let v = client.get(&format!("/compute/v1/projects/{p}/regions/-/endpoints")).await?;
                    let items = v["items"].as_array().cloned().unwrap_or_default();
                    let columns = vec![
                        Column { header: "NAME", cell: |v| s(&v["name"]) },
                        Column { header: "REGION", cell: |v| last(&v["region"]) },
                        Column { header: "NETWORK", cell: |v| last(&v["network"]) },
                        Column { header: "SUBNET", cell: |v| last(&v["subnetwork"]) },
                        Column { header: "ADDRESS", cell: |v| s(&v["address"]) },
                        Column { header: "HOSTNAME", cell: |v| s(&v["hostname"]) },
                        Column { header: "TARGET", cell: |v| s(&v["target"]) },
                    ];
                    print_list(format, &items, &columns)
                }
                EndpointsCmd::Describe { name } => {
                    print_value(format, &client.get(&format!("{endpoints}/{name}")).await?)
                }
                EndpointsCmd::Delete { name } => {
                    client.delete(&format!("{endpoints}/{name}")).await?;
                    eprintln!("Deleted [{endpoints}/{name}].");
                    Ok(())
                }
            }
        }
        NetworksCmd::VpcAccess(VpcAccessCmd::Connectors(cmd)) => match cmd {
            ConnectorsCmd::Create { name, network, range, subnet, min_instances, max_instances, machine_type } => {
                let mut body = Map::new();
                if let Some(n) = network {
                    body.insert("network".into(), json!(n));
                }
                if let Some(r) = range {
                    body.insert("ipCidrRange".into(), json!(r));
                }
                if let Some(sn) = subnet {
                    body.insert("subnet".into(), json!({ "name": sn, "projectId": p }));
                }
                if let Some(n) = min_instances {
                    body.insert("minInstances".into(), json!(n));
                }
                if let Some(n) = max_instances {
                    body.insert("maxInstances".into(), json!(n));
                }
                if let Some(m) = machine_type {
                    body.insert("machineType".into(), json!(m));
                }
                client.post(&format!("{connectors}?connectorId={name}"), &Value::Object(body)).await?;
                eprintln!("Created connector [{name}].");
                Ok(())
            }
            ConnectorsCmd::List => {
                let v = client.get(&connectors).await?;
                let items = v["connectors"].as_array().cloned().unwrap_or_default();
                let columns = vec![
                    Column { header: "CONNECTOR_ID", cell: |v| last(&v["name"]) },
                    Column {
                        header: "REGION",
                        cell: |v| s(&v["name"]).split('/').nth(3).unwrap_or_default().to_string(),
                    },
                    Column { header: "NETWORK", cell: |v| s(&v["network"]) },
                    Column { header: "IP_CIDR_RANGE", cell: |v| s(&v["ipCidrRange"]) },
                    Column { header: "SUBNET", cell: |v| s(&v["subnet"]["name"]) },
                    Column { header: "MIN_INSTANCES", cell: |v| s(&v["minInstances"]) },
                    Column { header: "MAX_INSTANCES", cell: |v| s(&v["maxInstances"]) },
                    Column { header: "STATE", cell: |v| s(&v["state"]) },
                ];
                print_list(format, &items, &columns)
            }
            ConnectorsCmd::Describe { name } => {
                print_value(format, &client.get(&format!("{connectors}/{name}")).await?)
            }
            ConnectorsCmd::Delete { name } => {
                client.delete(&format!("{connectors}/{name}")).await?;
                eprintln!("Deleted connector [{name}].");
                Ok(())
            }
        },
    }
}
