//! The command line, after gcloud's verbs and flags for the surface runnel covers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "Run HTTP services with Cloud Run's private service-to-service security model",
    long_about = "runnel runs HTTP services with Cloud Run's private service-to-service security model: \
internal-only ingress, VPC connectors and egress settings, one service account per revision, \
roles/run.invoker bindings and ID tokens.\n\n`runnel up` starts the daemon; every other command is a client of its API, \
found through RUNNEL_HOME.",
    after_help = "Examples:\n  runnel up\n  runnel run deploy receiver --command=python3 --args=app.py --ingress=internal --no-allow-unauthenticated\n  runnel iam service-accounts create caller\n  runnel run services add-iam-policy-binding receiver --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// State directory of the daemon to use [default: $RUNNEL_HOME, else $XDG_DATA_HOME/runnel].
    #[arg(long, global = true, env = "RUNNEL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Project id; defaults to the daemon's project.
    #[arg(long, global = true, env = "RUNNEL_PROJECT")]
    pub project: Option<String>,
    /// Region; defaults to the daemon's default region (local1).
    #[arg(long, global = true, env = "RUNNEL_REGION")]
    pub region: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub format: Format,
    /// API address, overriding the one in RUNNEL_HOME/daemon.json.
    #[arg(long, global = true, env = "RUNNEL_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// File holding the credential to call the API with [default: $RUNNEL_CREDENTIAL, else RUNNEL_HOME/owner.credential].
    #[arg(long, global = true, value_name = "FILE")]
    pub credential_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// Start the runnel daemon in the foreground (Ctrl-C stops it).
    Up(Up),
    /// Walk the guide end to end on a throwaway daemon: every step's command and what a call gets.
    Demo(crate::demo::DemoArgs),
    /// The demo's example apps (`receiver`, `caller`), run as instances by `runnel demo`.
    #[command(name = "__demo-app", hide = true)]
    DemoApp(crate::demo::DemoAppArgs),
    /// Cloud Run: deploy and manage services and revisions.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel run deploy hello --command=python3 --args=-m,http.server,8080 --allow-unauthenticated\n  runnel run services list\n  runnel run revisions list --service=hello"
    )]
    Run(RunCmd),
    /// IAM: service accounts.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel iam service-accounts create caller\n  runnel iam service-accounts list"
    )]
    Iam(IamCmd),
    /// The project and its IAM policy.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel projects get-iam-policy runnel-local\n  runnel projects add-iam-policy-binding runnel-local --member=user:alice@example.com --role=roles/run.developer"
    )]
    Projects(ProjectsCmd),
    /// VPC networks, subnets and Serverless VPC Access connectors.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel compute networks create vpc\n  runnel compute networks vpc-access connectors create conn --region=local1 --network=vpc --range=10.8.0.0/28"
    )]
    Compute(ComputeCmd),
    /// API credentials for people.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel auth print-identity-token --audiences=http://receiver-PROJECTNUMBER.local1.run.localhost:7781\n  runnel auth credentials create --member=user:alice@example.com --output-file=alice.credential"
    )]
    Auth(AuthCmd),
    /// Why a call is refused: evaluate a call step by step, or explain a refused request.
    #[command(subcommand)]
    Troubleshoot(crate::troubleshoot::TroubleshootCmd),
    /// The platform's logs: `--denied` shows requests refused before reaching an instance.
    #[command(
        after_help = "Example:\n  runnel logs --denied --limit=20\n\nA refused response carries its id in the X-Runnel-Request-Id header; find it here."
    )]
    Logs(PlatformLogs),
}

#[derive(Debug, Args)]
pub struct PlatformLogs {
    /// Requests refused by ingress or by an instance's egress proxy, with their reasons.
    #[arg(long, required = true)]
    pub denied: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  runnel up\n  RUNNEL_HOME=/tmp/rn runnel up --api-address=127.0.0.1:0 --project-id=my-project"
)]
pub struct Up {
    /// Where the control-plane API listens (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7780", value_name = "ADDR")]
    pub api_address: String,
    /// Where the frontend serves services; service URLs are derived from its port.
    #[arg(long, default_value = "127.0.0.1:7781", value_name = "ADDR")]
    pub frontend_address: String,
    /// Domain under which services get their hosts: SERVICE-PROJECTNUMBER.REGION.DOMAIN.
    #[arg(long, default_value = "run.localhost")]
    pub domain: String,
    /// Project id to create at first start (later starts must match it).
    #[arg(long = "project-id", default_value = "runnel-local")]
    pub project_id: String,
    /// The operator principal, who holds roles/owner.
    #[arg(long, default_value = "user:owner@runnel.localhost")]
    pub owner: String,
    /// Default region for clients.
    #[arg(long, default_value = "local1")]
    pub default_region: String,
    /// What this daemon does: everything, or only the control plane (API and store, no
    /// instances and no frontend; revisions are recorded as ready at once).
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,
    /// Seconds a new instance has to start listening on its port before it counts as failed.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub startup_deadline: u64,
    /// Worker threads of the frontend [default: share the daemon's threads].
    #[arg(long, value_name = "N")]
    pub frontend_threads: Option<std::num::NonZeroUsize>,
    /// Allow the frontend on a non-loopback address without TLS.
    #[arg(long)]
    pub allow_insecure_frontend: bool,
    /// How instances are confined: `sandbox` (Linux namespaces), or `none` where the kernel
    /// allows no namespaces. `none` is insecure: instances share the host's network, files and
    /// processes, and reach each other and the daemon directly.
    #[arg(long, value_enum, default_value = "sandbox")]
    pub isolation: IsolationFlag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationFlag {
    Sandbox,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Control plane, instances and frontend.
    All,
    /// Only the control plane.
    ControlPlane,
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Create or update a service and deploy a new revision.
    #[command(
        after_help = "Examples:\n  runnel run deploy receiver --command=python3 --args=app.py --ingress=internal --no-allow-unauthenticated\n  runnel run deploy caller --vpc-connector=conn --vpc-egress=all-traffic --service-account=caller@PROJECT.iam.gserviceaccount.com"
    )]
    Deploy(Deploy),
    /// Manage services.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel run services list\n  runnel run services describe receiver\n  runnel run services add-iam-policy-binding receiver --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
    )]
    Services(ServicesCmd),
    /// View revisions.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel run revisions list --service=caller\n  runnel run revisions describe caller-00001-abc"
    )]
    Revisions(RevisionsCmd),
}

/// List flags accept gcloud's `^DELIM^` prefix to use another delimiter than a comma.
#[derive(Debug, Args, Default, Clone)]
pub struct Deploy {
    /// Service name.
    pub service: String,
    #[command(flatten)]
    pub flags: DeployFlags,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DeployFlags {
    /// Program to run and its leading arguments, comma-separated (the container's entrypoint).
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments, comma-separated.
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Working directory of the process [default: the current directory when the service is created].
    #[arg(long)]
    pub working_dir: Option<String>,
    /// Image label only; runnel runs `--command` on the host's files.
    #[arg(long)]
    pub image: Option<String>,
    /// Replace all environment variables: KEY=VALUE,...
    #[arg(long)]
    pub set_env_vars: Option<String>,
    /// Add or change environment variables: KEY=VALUE,...
    #[arg(long)]
    pub update_env_vars: Option<String>,
    /// Remove environment variables: KEY,...
    #[arg(long)]
    pub remove_env_vars: Option<String>,
    /// Remove every environment variable.
    #[arg(long)]
    pub clear_env_vars: bool,
    /// Port the process listens on (PORT).
    #[arg(long)]
    pub port: Option<u32>,
    /// all | internal | internal-and-cloud-load-balancing
    #[arg(long)]
    pub ingress: Option<String>,
    /// Service account the revision runs as (email or account id).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Serverless VPC Access connector (name or full resource name).
    #[arg(long)]
    pub vpc_connector: Option<String>,
    /// Remove the VPC connector.
    #[arg(long)]
    pub clear_vpc_connector: bool,
    /// private-ranges-only | all-traffic
    #[arg(long)]
    pub vpc_egress: Option<String>,
    /// Network for Direct VPC egress.
    #[arg(long)]
    pub network: Option<String>,
    /// Subnet for Direct VPC egress.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Remove Direct VPC egress.
    #[arg(long)]
    pub clear_network: bool,
    /// Grant roles/run.invoker to allUsers.
    #[arg(long, overrides_with = "no_allow_unauthenticated")]
    pub allow_unauthenticated: bool,
    /// Remove allUsers' roles/run.invoker.
    #[arg(long)]
    pub no_allow_unauthenticated: bool,
    /// Turn the invoker IAM check on (default).
    #[arg(long, overrides_with = "no_invoker_iam_check")]
    pub invoker_iam_check: bool,
    /// Turn the invoker IAM check off: anyone who passes ingress may call.
    #[arg(long)]
    pub no_invoker_iam_check: bool,
    #[arg(long)]
    pub min_instances: Option<u32>,
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Requests an instance serves at once (1-1000).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Request timeout: 300, 300s, 5m.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Serve the default URL (default).
    #[arg(long, overrides_with = "no_default_url")]
    pub default_url: bool,
    /// Make the default URL answer 404 for everyone.
    #[arg(long)]
    pub no_default_url: bool,
    /// Accept ID tokens for these audiences too: AUD,...
    #[arg(long)]
    pub add_custom_audiences: Option<String>,
    /// Stop accepting these custom audiences: AUD,...
    #[arg(long)]
    pub remove_custom_audiences: Option<String>,
    /// Remove every custom audience.
    #[arg(long)]
    pub clear_custom_audiences: bool,
    /// Name the new revision SERVICE-SUFFIX.
    #[arg(long)]
    pub revision_suffix: Option<String>,
    /// Service labels: KEY=VALUE,...
    #[arg(long)]
    pub labels: Option<String>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum ServicesCmd {
    /// List services.
    #[command(
        after_help = "Examples:\n  runnel run services list\n  runnel run services list --region=- --format=json"
    )]
    List,
    /// Show a service.
    #[command(
        after_help = "Examples:\n  runnel run services describe receiver\n  runnel run services describe receiver --format=json"
    )]
    Describe { service: String },
    /// Change a service's settings (a template change deploys a new revision).
    #[command(
        after_help = "Examples:\n  runnel run services update receiver --ingress=internal\n  runnel run services update caller --vpc-egress=all-traffic\n  runnel run services update receiver --add-custom-audiences=https://receiver.example.com"
    )]
    Update(Deploy),
    /// Delete a service and its revisions.
    #[command(after_help = "Example:\n  runnel run services delete hello")]
    Delete { service: String },
    /// Show a service's IAM policy.
    #[command(
        after_help = "Examples:\n  runnel run services get-iam-policy receiver\n  runnel run services get-iam-policy receiver --format=json > policy.json"
    )]
    GetIamPolicy { service: String },
    /// Replace a service's IAM policy with the one in FILE (JSON or YAML).
    #[command(
        after_help = "Examples:\n  runnel run services get-iam-policy receiver --format=json > policy.json\n  runnel run services set-iam-policy receiver policy.json   # edited; a stale etag is refused"
    )]
    SetIamPolicy { service: String, file: PathBuf },
    /// Grant a role on a service.
    #[command(
        after_help = "Example:\n  runnel run services add-iam-policy-binding receiver --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
    )]
    AddIamPolicyBinding(ServiceBinding),
    /// Revoke a role on a service.
    #[command(
        after_help = "Example:\n  runnel run services remove-iam-policy-binding receiver --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
    )]
    RemoveIamPolicyBinding(ServiceBinding),
    /// Read a service's logs: its instances' output, or with --requests its request log.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel run services logs read receiver --requests\n  runnel run services logs tail caller"
    )]
    Logs(LogsCmd),
    /// Serve a service on http://127.0.0.1:PORT with your identity, like `gcloud run services proxy`.
    #[command(
        long_about = "Serve a service on http://127.0.0.1:PORT: every request is forwarded to the service through the frontend with your ID token (in X-Serverless-Authorization; your own Authorization header travels unchanged), so you can call a private service with curl or a browser.\n\nRequests arrive from the internet, so an internal-only service refuses them (404, `ingress.internal_only.from_internet`). With --network=NET the daemon opens the listener instead and its requests enter network NET as an operator proxy for you; this needs `compute.networks.use` on the network (roles/compute.networkUser, editor or owner), every request is logged with your name, and the listener closes when this command ends.",
        after_help = "Examples:\n  runnel run services proxy receiver --port=8080\n  curl http://127.0.0.1:8080/\n  runnel run services proxy internal-api --port=8081 --network=vpc"
    )]
    Proxy(ProxyArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    pub service: String,
    /// The local port to listen on (127.0.0.1 only).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Enter this VPC network (the daemon proxies, as an operator proxy for you).
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LogsCmd {
    /// Print the latest log entries.
    #[command(
        after_help = "Examples:\n  runnel run services logs read receiver --limit=50\n  runnel run services logs read receiver --requests"
    )]
    Read {
        service: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The request log (one record per request) instead of instance output.
        #[arg(long)]
        requests: bool,
    },
    /// Print new log entries as they arrive, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  runnel run services logs tail caller\n  runnel run services logs tail receiver --requests"
    )]
    Tail {
        service: String,
        #[arg(long)]
        requests: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServiceBinding {
    pub service: String,
    #[command(flatten)]
    pub binding: Binding,
}

#[derive(Debug, Args)]
pub struct Binding {
    /// allUsers, allAuthenticatedUsers, user:EMAIL, group:EMAIL, serviceAccount:EMAIL
    #[arg(long)]
    pub member: String,
    /// A role, such as roles/run.invoker.
    #[arg(long)]
    pub role: String,
    /// IAM conditions are not supported; runnel refuses rather than grant more than meant.
    #[arg(long)]
    pub condition: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RevisionsCmd {
    /// List revisions (of one service with --service).
    #[command(after_help = "Examples:\n  runnel run revisions list\n  runnel run revisions list --service=caller")]
    List {
        #[arg(long)]
        service: Option<String>,
    },
    /// Show a revision.
    #[command(after_help = "Example:\n  runnel run revisions describe caller-00001-abc")]
    Describe { revision: String },
}

#[derive(Debug, Subcommand)]
pub enum IamCmd {
    /// Manage service accounts.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel iam service-accounts create caller\n  runnel iam service-accounts describe caller@PROJECT.iam.gserviceaccount.com"
    )]
    ServiceAccounts(AccountsCmd),
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    /// Create a service account.
    #[command(after_help = "Example:\n  runnel iam service-accounts create caller --display-name=\"Calling service\"")]
    Create {
        /// Account id: 6-30 lowercase letters, digits and hyphens.
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List service accounts.
    #[command(after_help = "Example:\n  runnel iam service-accounts list")]
    List,
    /// Show a service account.
    #[command(after_help = "Example:\n  runnel iam service-accounts describe caller@PROJECT.iam.gserviceaccount.com")]
    Describe { account: String },
    /// Delete a service account (refused while a service runs as it).
    #[command(after_help = "Example:\n  runnel iam service-accounts delete caller@PROJECT.iam.gserviceaccount.com")]
    Delete { account: String },
    /// Disable a service account: it gets no tokens and its calls are refused.
    #[command(after_help = "Example:\n  runnel iam service-accounts disable caller@PROJECT.iam.gserviceaccount.com")]
    Disable { account: String },
    /// Enable a service account.
    #[command(after_help = "Example:\n  runnel iam service-accounts enable caller@PROJECT.iam.gserviceaccount.com")]
    Enable { account: String },
    /// Show a service account's IAM policy.
    #[command(
        after_help = "Example:\n  runnel iam service-accounts get-iam-policy caller@PROJECT.iam.gserviceaccount.com"
    )]
    GetIamPolicy { account: String },
    /// Grant a role on a service account (e.g. roles/iam.serviceAccountUser).
    #[command(
        after_help = "Example:\n  runnel iam service-accounts add-iam-policy-binding caller@PROJECT.iam.gserviceaccount.com --member=user:alice@example.com --role=roles/iam.serviceAccountUser"
    )]
    AddIamPolicyBinding {
        account: String,
        #[command(flatten)]
        binding: Binding,
    },
    /// Revoke a role on a service account.
    #[command(
        after_help = "Example:\n  runnel iam service-accounts remove-iam-policy-binding caller@PROJECT.iam.gserviceaccount.com --member=user:alice@example.com --role=roles/iam.serviceAccountUser"
    )]
    RemoveIamPolicyBinding {
        account: String,
        #[command(flatten)]
        binding: Binding,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCmd {
    /// Show the project's IAM policy.
    #[command(after_help = "Example:\n  runnel projects get-iam-policy runnel-local")]
    GetIamPolicy { project: String },
    /// Grant a role on the project (applies to all its resources).
    #[command(
        after_help = "Example:\n  runnel projects add-iam-policy-binding runnel-local --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
    )]
    AddIamPolicyBinding {
        project: String,
        #[command(flatten)]
        binding: Binding,
    },
    /// Revoke a role on the project.
    #[command(
        after_help = "Example:\n  runnel projects remove-iam-policy-binding runnel-local --member=serviceAccount:caller@PROJECT.iam.gserviceaccount.com --role=roles/run.invoker"
    )]
    RemoveIamPolicyBinding {
        project: String,
        #[command(flatten)]
        binding: Binding,
    },
}

#[derive(Debug, Subcommand)]
pub enum ComputeCmd {
    /// VPC networks.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel compute networks create vpc\n  runnel compute networks subnets create sub --network=vpc --range=10.0.0.0/24"
    )]
    Networks(NetworksCmd),
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum NetworksCmd {
    /// Create a VPC network (custom subnet mode).
    #[command(after_help = "Example:\n  runnel compute networks create vpc")]
    Create {
        name: String,
        /// Only `custom` is supported: add subnets yourself.
        #[arg(long, default_value = "custom")]
        subnet_mode: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List VPC networks.
    #[command(after_help = "Example:\n  runnel compute networks list")]
    List,
    /// Show a VPC network.
    #[command(after_help = "Example:\n  runnel compute networks describe vpc")]
    Describe { name: String },
    /// Delete a network (refused while subnets or connectors use it).
    #[command(after_help = "Example:\n  runnel compute networks delete vpc")]
    Delete { name: String },
    /// Subnets.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel compute networks subnets create sub --network=vpc --range=10.0.0.0/24 --enable-private-ip-google-access\n  runnel compute networks subnets list --network=vpc"
    )]
    Subnets(SubnetsCmd),
    /// Serverless VPC Access.
    #[command(
        subcommand,
        name = "vpc-access",
        after_help = "Examples:\n  runnel compute networks vpc-access connectors create conn --region=local1 --network=vpc --range=10.8.0.0/28\n  runnel compute networks vpc-access connectors list"
    )]
    VpcAccess(VpcAccessCmd),
    /// Internal endpoints: private hosts (a database, a cache) that services reach through the VPC.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel compute networks endpoints create db --network=vpc --subnet=sub --address=10.0.0.5:5432 --target=127.0.0.1:5432\n  runnel compute networks endpoints list"
    )]
    Endpoints(EndpointsCmd),
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCmd {
    /// Place a name and an internal address in a subnet, and say where the service really listens.
    #[command(
        after_help = "Example:\n  runnel compute networks endpoints create db --network=vpc --subnet=sub --address=10.0.0.5:5432 --target=127.0.0.1:5432\n\nInside instances with VPC access it answers at 10.0.0.5:5432 and at db.vpc.internal:5432."
    )]
    Create {
        name: String,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        subnet: String,
        /// IP:PORT inside the subnet's range.
        #[arg(long)]
        address: String,
        /// IP:PORT where the service really listens on this machine.
        #[arg(long)]
        target: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List internal endpoints.
    #[command(after_help = "Example:\n  runnel compute networks endpoints list")]
    List,
    /// Show an internal endpoint.
    #[command(after_help = "Example:\n  runnel compute networks endpoints describe db")]
    Describe { name: String },
    /// Delete an internal endpoint.
    #[command(after_help = "Example:\n  runnel compute networks endpoints delete db")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SubnetsCmd {
    /// Create a subnet in a region.
    #[command(
        after_help = "Example:\n  runnel compute networks subnets create sub --network=vpc --range=10.0.0.0/24 --enable-private-ip-google-access"
    )]
    Create {
        name: String,
        #[arg(long)]
        network: String,
        /// IPv4 range, /8 to /29, in private space.
        #[arg(long)]
        range: String,
        /// Private Google Access: service URLs reached through this subnet count as internal.
        #[arg(long)]
        enable_private_ip_google_access: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// List subnets (all regions unless --region).
    #[command(
        after_help = "Examples:\n  runnel compute networks subnets list\n  runnel compute networks subnets list --network=vpc --region=local1"
    )]
    List {
        #[arg(long)]
        network: Option<String>,
    },
    /// Show a subnet.
    #[command(after_help = "Example:\n  runnel compute networks subnets describe sub")]
    Describe { name: String },
    /// Delete a subnet (refused while connectors, endpoints or services use it).
    #[command(after_help = "Example:\n  runnel compute networks subnets delete sub")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VpcAccessCmd {
    /// Connectors.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel compute networks vpc-access connectors create conn --region=local1 --network=vpc --range=10.8.0.0/28\n  runnel compute networks vpc-access connectors list"
    )]
    Connectors(ConnectorsCmd),
}

#[derive(Debug, Subcommand)]
pub enum ConnectorsCmd {
    /// Create a connector with a network and an unused /28, or on an existing /28 subnet.
    #[command(
        after_help = "Examples:\n  runnel compute networks vpc-access connectors create conn --region=local1 --network=vpc --range=10.8.0.0/28\n  runnel compute networks vpc-access connectors create conn --region=local1 --subnet=conn-subnet"
    )]
    Create {
        name: String,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        range: Option<String>,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        min_instances: Option<u32>,
        #[arg(long)]
        max_instances: Option<u32>,
        #[arg(long)]
        machine_type: Option<String>,
    },
    /// List connectors.
    #[command(after_help = "Example:\n  runnel compute networks vpc-access connectors list")]
    List,
    /// Show a connector.
    #[command(after_help = "Example:\n  runnel compute networks vpc-access connectors describe conn")]
    Describe { name: String },
    /// Delete a connector (refused while a service uses it).
    #[command(after_help = "Example:\n  runnel compute networks vpc-access connectors delete conn")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// API credentials for user principals.
    #[command(
        subcommand,
        after_help = "Examples:\n  runnel auth credentials create --member=user:alice@example.com --output-file=alice.credential\n  runnel auth credentials list"
    )]
    Credentials(CredentialsCmd),
    /// Print an ID token for you, or for a service account you may impersonate.
    #[command(
        after_help = "Examples:\n  curl -H \"Authorization: Bearer $(runnel auth print-identity-token --audiences=http://receiver-NUMBER.local1.run.localhost:7781)\" http://receiver-NUMBER.local1.run.localhost:7781/\n  runnel auth print-identity-token --audiences=URL --impersonate-service-account=caller@PROJECT.iam.gserviceaccount.com"
    )]
    PrintIdentityToken {
        /// The audience: the URL of the service the token is for.
        #[arg(long)]
        audiences: String,
        /// A service account to get the token for (needs iam.serviceAccounts.getOpenIdToken on it).
        #[arg(long)]
        impersonate_service_account: Option<String>,
    },
    /// Print an access token for you, or for a service account you may impersonate: the API
    /// accepts it as that principal, with exactly its permissions, for up to an hour.
    #[command(
        after_help = "Examples:\n  curl -H \"Authorization: Bearer $(runnel auth print-access-token)\" http://127.0.0.1:7780/v2/projects/PROJECT/locations/local1/services\n  RUNNEL_CREDENTIAL=$(runnel auth print-access-token --impersonate-service-account=deployer@PROJECT.iam.gserviceaccount.com) runnel run services list"
    )]
    PrintAccessToken {
        /// A service account to get the token for (needs iam.serviceAccounts.getAccessToken on it).
        #[arg(long)]
        impersonate_service_account: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCmd {
    /// Issue a credential for a user; prints the secret once.
    #[command(
        after_help = "Example:\n  runnel auth credentials create --member=user:alice@example.com --output-file=alice.credential"
    )]
    Create {
        #[arg(long)]
        member: String,
        #[arg(long)]
        description: Option<String>,
        /// Write the secret to this file (mode 0600) instead of printing it.
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
    /// List credentials (never their secrets).
    #[command(after_help = "Example:\n  runnel auth credentials list")]
    List,
    /// Revoke a credential by id.
    #[command(
        after_help = "Example:\n  runnel auth credentials revoke ID   # the id from `runnel auth credentials list`"
    )]
    Revoke { id: String },
}
