//! `graph-emulator`: runs the emulator standalone.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use graph_emulator::{control, Emulator, Settings};

const CONTROL_API: &str = "\
ENDPOINTS (one base address, e.g. http://127.0.0.1:7070):
  identity platform   {base}/{tenant}/oauth2/v2.0/token | devicecode | authorize
                      {base}/{tenant}/v2.0/adminconsent
  Microsoft Graph     {base}/v1.0/...           (users, subscribedSkus, assignLicense, messages,
                                                 mailFolders, sendMail, events, drive, chats,
                                                 applications, subscriptions, $batch)
  Developer Portal    {base}/devportal/api/...  (appdefinitions/v2/import, botframework,
                                                 usersettings/mtUserAppPolicy)
  Point tenantd at it: identity.authority = {base}, graph.base_url = {base}/v1.0

CONTROL API ({base}/_emulator, JSON):
  POST   /tenants                         {domain, id?, displayName?, skus?: [{skuPartNumber, seats}]}
  GET    /tenants                         tenants with users and grants
  POST   /tenants/{t}/apps                {clientId?, clientSecret?, publicClient?, displayName?,
                                           redirectUris?, applicationPermissions?, delegatedPermissions?,
                                           adminConsented? (default true)}
  DELETE /tenants/{t}/apps/{clientId}/grant   revoke the tenant's consent
  POST   /tenants/{t}/users               {userPrincipalName, displayName?, usageLocation?, license?}
  PATCH  /tenants/{t}/users/{user}        set properties, e.g. {\"accountEnabled\": false}
  PUT    /tenants/{t}/consent             {outcome: approve|refuse} for the admin consent page
  PUT    /tenants/{t}/sideloading         {allowed: bool}
  POST   /failures                        {failure, tenant?, clientId?, user?}; failure is one of
                                          consent_required (65001), mfa_required (50076),
                                          blocked_by_conditional_access (53003),
                                          refresh_token_expired (700082), refresh_token_revoked (50173),
                                          bad_client_secret (7000215), app_not_in_tenant (700016),
                                          unknown_tenant (90002)
  GET|DELETE /failures                    list or clear them
  POST   /devicecodes/{userCode}/approve  {user}      POST /devicecodes/{userCode}/decline
  GET    /subscriptions                   every subscription
  POST   /subscriptions/{id}/lifecycle    {event: reauthorizationRequired|subscriptionRemoved|missed}
  GET|PUT /settings                       token lifetimes, provisioning delay, handshake and
                                          delivery timeouts, delivery retries
  GET|PUT /budgets                        {requestsPerWindow, windowSeconds, mailboxConcurrency,
                                           refill: fixedWindow|tokenBucket}, per app, tenant
                                          and service (identity, outlook, files, teams, ...)
  GET|PUT /faults                         {seed, errorRate, errorStatuses, latencyMs, dropRate,
                                           notificationDelayMs}
  GET|DELETE /requests                    the request log (method, path, status, time)
  GET    /deliveries                      notification deliveries and their outcome
  GET    /counters                        counters (tokens, throttled, faults, notifications)
  POST   /demo                            seed the demo tenant (what --demo does)";

/// A stateful stand-in for Microsoft Graph v1.0, the identity platform v2.0 and the Teams
/// Developer Portal subset tenantd uses.
#[derive(Debug, Parser)]
#[command(name = "graph-emulator", version, about, after_help = CONTROL_API)]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    bind: SocketAddr,
    /// Seed the demo tenant (contoso-demo.onmicrosoft.com) and print its app credentials
    #[arg(long)]
    demo: bool,
    /// Access token lifetime in seconds (Microsoft: 3599 and up)
    #[arg(long, default_value_t = 3599, value_name = "SECONDS")]
    access_token_lifetime: u64,
    /// Delay between licensing a user and the mailbox and drive appearing
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    provisioning_delay: u64,
    /// Accept http:// notification URLs on any host (loopback is always accepted)
    #[arg(long)]
    allow_http_webhooks: bool,
    /// The cloud to stand in for: global, usgov, usgov-dod or china (its Graph resource is the
    /// only Graph token audience issued and accepted)
    #[arg(long, default_value = "global", value_parser = parse_cloud, value_name = "CLOUD")]
    cloud: graph_emulator::world::Cloud,
}

fn parse_cloud(name: &str) -> Result<graph_emulator::world::Cloud, String> {
    graph_emulator::world::Cloud::parse(name)
        .ok_or_else(|| format!("`{name}` is not a cloud: use global, usgov, usgov-dod or china"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = Settings {
        access_token_lifetime_seconds: args.access_token_lifetime,
        provisioning_delay_seconds: args.provisioning_delay,
        allow_http_notification_urls: args.allow_http_webhooks,
        cloud: args.cloud,
        ..Settings::default()
    };
    let emulator = match Emulator::start(args.bind, settings).await {
        Ok(emulator) => emulator,
        Err(err) => {
            eprintln!("graph-emulator: cannot listen on {}: {err}", args.bind);
            return std::process::ExitCode::from(1);
        }
    };
    println!("graph-emulator listening on {}", emulator.base_url());
    println!("  identity.authority = {}", emulator.base_url());
    println!("  graph.base_url     = {}", emulator.graph_url());
    println!("  developer portal   = {}", emulator.devportal_url());
    if args.demo {
        match control::seed_demo(emulator.shared()) {
            Ok(demo) => println!(
                "demo tenant {} ({}): client id {}, client secret {}, users {}",
                demo.tenant_id,
                demo.domain,
                demo.client_id,
                demo.client_secret,
                demo.users.join(", ")
            ),
            Err(err) => eprintln!("graph-emulator: cannot seed the demo tenant: {err}"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    emulator.stop();
    std::process::ExitCode::SUCCESS
}
