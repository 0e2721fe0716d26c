//! Seeded generator of realistic audit records for every workload, plus the optional
//! intrusion scenario.
//!
//! Every record is a pure function of a 64-bit seed (and the tenant and blob time), so the
//! simulator stores only seeds and regenerates identical bytes on every download. Records
//! are written field by field in the order Microsoft uses, with the wire quirks collectors
//! must survive: `CreationTime` without a zone, integer enums (rarely stringified), Entra
//! operations with trailing periods, failed sign-ins whose `ResultStatus` reads "Success",
//! `Parameters` as a list or as one string, `ClientIP` with ports, brackets, mapped IPv4 or
//! `null`, unknown `RecordType`s with unknown fields, non-ASCII text and large DLP/Teams
//! records.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::config::{ContentType, Intrusion};

/// Tenant facts records are generated for.
#[derive(Clone, Debug)]
pub(crate) struct TenantCtx {
    pub(crate) tenant_id: String,
    pub(crate) domain: String,
}

/// Mix two 64-bit values into a well-distributed seed (splitmix64 finaliser).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash a string into a seed component.
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A GUID (version-4 layout) derived from a seed.
pub(crate) fn guid(seed: u64) -> String {
    let hi = mix(seed, 1);
    let lo = mix(seed, 2);
    let bytes: u128 = (u128::from(hi) << 64) | u128::from(lo);
    let mut b = bytes.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// The record `Id` of a generated record.
pub(crate) fn record_id(seed: u64) -> String {
    guid(mix(seed, 0x1d))
}

/// `CreationTime` wire format: UTC, no zone, no fraction.
pub(crate) fn creation_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Ordered JSON object writer (serde_json maps would sort the keys).
struct Rec {
    buf: String,
    empty: bool,
}

impl Rec {
    fn new() -> Rec {
        Rec {
            buf: String::with_capacity(1024),
            empty: true,
        }
    }

    fn put(&mut self, key: &str, value: Value) -> &mut Rec {
        self.buf.push(if self.empty { '{' } else { ',' });
        self.empty = false;
        self.buf
            .push_str(&Value::String(key.to_owned()).to_string());
        self.buf.push(':');
        self.buf.push_str(&value.to_string());
        self
    }

    fn done(mut self) -> String {
        if self.empty {
            self.buf.push('{');
        }
        self.buf.push('}');
        self.buf
    }
}

const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoe", "jose",
    "soren", "asa", "mikolaj", "yuki", "lena",
];
const DISPLAY_NAMES: &[&str] = &[
    "Zoë Müller",
    "José García",
    "Søren Kierkegaard",
    "Åsa Lindström",
    "Mikołaj Kowalski",
    "山田 優希",
    "Lena Nguyễn",
    "Alice Smith",
];
const FILES: &[&str] = &[
    "Quarterly Report Q3.xlsx",
    "Präsentation_Vertrieb_2024.pptx",
    "見積書_2024-05.pdf",
    "budget-final-FINAL(2).xlsx",
    "Contrato de confidencialidad.docx",
    "org chart.vsdx",
    "Ñandú – notes.txt",
    "design/spec v2.docx",
];
const SUBJECTS: &[&str] = &[
    "Re: Invoice 4471",
    "Rückfrage zur Bestellung",
    "会議の議事録",
    "Lunch on Friday? 🍕",
    "FW: Année fiscale 2024",
    "Quarterly numbers",
];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)",
    "OneDriveMpc-Transform_Thumbnail/1.0",
    "python-requests/2.31.0",
];

fn user(rng: &mut StdRng, ctx: &TenantCtx) -> String {
    format!(
        "{}@{}",
        USERS.choose(rng).copied().unwrap_or("alice"),
        ctx.domain
    )
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

fn v4(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!("203.0.113.{}", rng.random_range(1..255)),
        1 => format!("198.51.100.{}", rng.random_range(1..255)),
        _ => format!(
            "{}.{}.{}.{}",
            rng.random_range(20..223),
            rng.random_range(0..255),
            rng.random_range(0..255),
            rng.random_range(1..255)
        ),
    }
}

fn v6(rng: &mut StdRng) -> String {
    format!(
        "2001:db8:{:x}:{:x}::{:x}",
        rng.random_range(0..0xffff),
        rng.random_range(0..0xffff),
        rng.random_range(1..0xffff)
    )
}

/// A `ClientIP` value in one of the observed shapes.
fn client_ip(rng: &mut StdRng, nullable: bool) -> Value {
    let roll = rng.random_range(0..100);
    let s = match roll {
        0..=59 => v4(rng),
        60..=69 => format!("{}:{}", v4(rng), rng.random_range(1024..65535)),
        70..=79 => format!("[{}]:{}", v6(rng), rng.random_range(1024..65535)),
        80..=87 => v6(rng),
        88..=94 => format!("::ffff:{}", v4(rng)),
        _ if nullable => return Value::Null,
        _ => v4(rng),
    };
    Value::String(s)
}

/// Event time: usually minutes to an hour and a half before the blob, sometimes hours,
/// rarely days (always well inside the 7-day horizon).
fn event_time(rng: &mut StdRng, blob_created: DateTime<Utc>) -> DateTime<Utc> {
    let secs = match rng.random_range(0..100) {
        0..=69 => rng.random_range(30..5400),
        70..=94 => rng.random_range(3600..12 * 3600),
        _ => rng.random_range(86_400..3 * 86_400),
    };
    blob_created - Duration::seconds(secs)
}

/// The common header every record starts with.
#[allow(clippy::too_many_arguments)]
fn header(
    rng: &mut StdRng,
    ctx: &TenantCtx,
    id: &str,
    time: DateTime<Utc>,
    operation: &str,
    record_type: i64,
    result_status: Option<&str>,
    user_key: &str,
    user_type: i64,
    workload: &str,
) -> Rec {
    let mut r = Rec::new();
    r.put("CreationTime", json!(creation_time(time)))
        .put("Id", json!(id))
        .put("Operation", json!(operation))
        .put("OrganizationId", json!(ctx.tenant_id));
    // About 1% of records carry numbers as strings, as some exporters do.
    if rng.random_range(0..100) == 0 {
        r.put("RecordType", json!(record_type.to_string()));
    } else {
        r.put("RecordType", json!(record_type));
    }
    if let Some(status) = result_status {
        r.put("ResultStatus", json!(status));
    }
    r.put("UserKey", json!(user_key))
        .put("UserType", json!(user_type))
        .put("Version", json!(1))
        .put("Workload", json!(workload));
    r
}

fn nv(name: &str, value: &str) -> Value {
    json!({"Name": name, "Value": value})
}

/// Generate one record of `ct` for a blob created at `blob_created`; its `Id` is
/// [`record_id`]`(seed)`.
pub(crate) fn generate(
    ctx: &TenantCtx,
    ct: ContentType,
    blob_created: DateTime<Utc>,
    seed: u64,
) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let id = record_id(seed);
    let time = event_time(&mut rng, blob_created);
    match ct {
        ContentType::AzureActiveDirectory => aad(&mut rng, ctx, &id, time),
        ContentType::Exchange => exchange(&mut rng, ctx, &id, time),
        ContentType::SharePoint => sharepoint(&mut rng, ctx, &id, time),
        ContentType::General => general(&mut rng, ctx, &id, time),
        ContentType::Dlp => dlp(&mut rng, ctx, &id, time),
    }
}

const LOGON_ERRORS: &[(&str, &str)] = &[
    ("50126", "InvalidUserNameOrPassword"),
    ("50053", "IdsLocked"),
    ("50074", "UserStrongAuthClientAuthNRequiredInterrupt"),
    ("50076", "UserStrongAuthClientAuthNRequired"),
    ("500121", "AuthenticationFailed"),
    ("53003", "BlockedByConditionalAccess"),
    ("50140", "KmsiInterrupt"),
    ("50057", "UserDisabled"),
];

const DIRECTORY_OPS: &[&str] = &[
    "Add user.",
    "Update user.",
    "Add member to group.",
    "Reset user password.",
    "Add member to role.",
    "Consent to application.",
    "Add service principal.",
    "Update application – Certificates and secrets management ",
    "Set domain authentication.",
    "Update StsRefreshTokenValidFrom Timestamp.",
];

/// Parameters of one sign-in record.
struct Logon<'a> {
    user: &'a str,
    ip: Value,
    failure: Option<(&'a str, &'a str)>,
    user_agent: &'a str,
    result_status: &'a str,
}

fn sts_logon(
    rng: &mut StdRng,
    ctx: &TenantCtx,
    id: &str,
    time: DateTime<Utc>,
    l: &Logon<'_>,
) -> String {
    let op = if l.failure.is_some() {
        "UserLoginFailed"
    } else {
        "UserLoggedIn"
    };
    let user_key = guid(mix(hash_str(l.user), 7));
    let mut r = header(
        rng,
        ctx,
        id,
        time,
        op,
        15,
        Some(l.result_status),
        &user_key,
        0,
        "AzureActiveDirectory",
    );
    let resource = pick(
        rng,
        &[
            "00000003-0000-0000-c000-000000000000",
            "00000002-0000-0ff1-ce00-000000000000",
            "00000003-0000-0ff1-ce00-000000000000",
        ],
    );
    let detail = if l.failure.is_some() {
        "UserError"
    } else {
        pick(rng, &["Success", "Redirect"])
    };
    let ip_text =
        l.ip.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "203.0.113.1".to_owned());
    r.put("ClientIP", l.ip.clone())
        .put("ObjectId", json!(resource))
        .put("UserId", json!(l.user))
        .put("AzureActiveDirectoryEventType", json!(1))
        .put(
            "ExtendedProperties",
            json!([
                nv("ResultStatusDetail", detail),
                nv("UserAgent", l.user_agent),
                nv("UserAuthenticationMethod", "1"),
                nv(
                    "RequestType",
                    pick(
                        rng,
                        &[
                            "OAuth2:Authorize",
                            "OAuth2:Token",
                            "Login:login",
                            "SAS:ProcessAuth"
                        ]
                    )
                ),
                nv("KeepMeSignedIn", pick(rng, &["True", "False"])),
            ]),
        )
        .put("ModifiedProperties", json!([]))
        .put(
            "Actor",
            json!([{"ID": user_key, "Type": 0}, {"ID": l.user, "Type": 5}]),
        )
        .put("ActorContextId", json!(ctx.tenant_id))
        .put("ActorIpAddress", json!(ip_text))
        .put("InterSystemsId", json!(guid(rng.random())))
        .put("IntraSystemId", json!(guid(rng.random())))
        .put("SupportTicketId", json!(""))
        .put("Target", json!([{"ID": resource, "Type": 0}]))
        .put("TargetContextId", json!(ctx.tenant_id))
        .put(
            "ApplicationId",
            json!(pick(
                rng,
                &[
                    "04b07795-8ddb-461a-bbee-02f9e1bf7b47",
                    "d3590ed6-52b3-4102-aeff-aad2292ab01c",
                    "00000002-0000-0ff1-ce00-000000000000"
                ]
            )),
        )
        .put(
            "DeviceProperties",
            json!([
                nv("OS", pick(rng, &["Windows 10", "MacOs", "Ios", "Android"])),
                nv("BrowserType", pick(rng, &["Edge", "Chrome", "Safari"])),
                nv("IsCompliantAndManaged", "False"),
                nv("SessionId", &guid(rng.random()))
            ]),
        );
    match l.failure {
        Some((code, name)) => {
            r.put("ErrorCode", json!(code))
                .put("LogonError", json!(name));
        }
        None => {
            r.put("ErrorCode", json!("0"));
        }
    }
    r.done()
}

fn aad(rng: &mut StdRng, ctx: &TenantCtx, id: &str, time: DateTime<Utc>) -> String {
    let roll = rng.random_range(0..100);
    if roll < 80 {
        let upn = user(rng, ctx);
        let failure = (roll >= 55).then(|| *LOGON_ERRORS.choose(rng).unwrap_or(&LOGON_ERRORS[0]));
        // Failed sign-ins still read "Success"/"Succeeded": only the HTTP step succeeded.
        let result_status = pick(rng, &["Success", "Succeeded", "Succeeded", "success"]);
        let logon = Logon {
            user: &upn,
            ip: client_ip(rng, false),
            failure,
            user_agent: pick(rng, USER_AGENTS),
            result_status,
        };
        return sts_logon(rng, ctx, id, time, &logon);
    }
    let op = pick(rng, DIRECTORY_OPS);
    let actor = user(rng, ctx);
    let target = user(rng, ctx);
    let actor_key = format!("{:016X}@{}", mix(hash_str(&actor), 3) >> 8, ctx.domain);
    let status = pick(rng, &["Success", "success"]);
    let mut r = header(
        rng,
        ctx,
        id,
        time,
        op,
        8,
        Some(status),
        &actor_key,
        0,
        "AzureActiveDirectory",
    );
    r.put("ClientIP", client_ip(rng, true))
        .put("ObjectId", json!(target))
        .put("UserId", json!(actor))
        .put("AzureActiveDirectoryEventType", json!(1))
        .put(
            "ExtendedProperties",
            json!([nv("additionalDetails", "{}"), nv("extendedAuditEventCategory", "User")]),
        )
        .put(
            "ModifiedProperties",
            json!([{"Name": "AccountEnabled", "NewValue": "[\r\n  true\r\n]", "OldValue": "[]"}]),
        )
        .put(
            "Actor",
            json!([{"ID": guid(hash_str(&actor)), "Type": 2}, {"ID": actor, "Type": 5}]),
        )
        .put("ActorContextId", json!(ctx.tenant_id))
        .put("InterSystemsId", json!(guid(rng.random())))
        .put("IntraSystemId", json!(guid(rng.random())))
        .put("SupportTicketId", json!(""))
        .put(
            "Target",
            json!([{"ID": format!("User_{}", guid(hash_str(&target))), "Type": 2}, {"ID": target, "Type": 5}]),
        )
        .put("TargetContextId", json!(ctx.tenant_id));
    r.done()
}

/// An Exchange admin (cmdlet) record.
#[allow(clippy::too_many_arguments)]
fn exchange_admin(
    rng: &mut StdRng,
    ctx: &TenantCtx,
    id: &str,
    time: DateTime<Utc>,
    actor: &str,
    ip: Value,
    cmdlet: &str,
    object: &str,
    params: Value,
) -> String {
    let user_key = format!("{:016X}", mix(hash_str(actor), 5) >> 8);
    let mut r = header(
        rng,
        ctx,
        id,
        time,
        cmdlet,
        1,
        Some("True"),
        &user_key,
        2,
        "Exchange",
    );
    r.put("ClientIP", ip)
        .put("ObjectId", json!(object))
        .put("UserId", json!(actor))
        .put("AppId", json!(""))
        .put("ClientAppId", json!(""))
        .put("ExternalAccess", json!(false))
        .put("OrganizationName", json!(ctx.domain))
        .put(
            "OriginatingServer",
            json!(format!(
                "AM0PR{:02}MB{:04} (15.20.7452.000)",
                rng.random_range(1..99),
                rng.random_range(1000..9999)
            )),
        )
        .put("Parameters", params)
        .put("SessionId", json!(guid(rng.random())))
        .put("TokenObjectId", json!(guid(hash_str(actor))))
        .put("TokenTenantId", json!(ctx.tenant_id));
    r.done()
}

fn exchange(rng: &mut StdRng, ctx: &TenantCtx, id: &str, time: DateTime<Utc>) -> String {
    let owner = user(rng, ctx);
    let roll = rng.random_range(0..100);
    if roll < 25 {
        let (cmdlet, params) = match rng.random_range(0..4) {
            0 => (
                "Set-Mailbox",
                json!([
                    nv("Identity", &owner),
                    nv("RetainDeletedItemsFor", "30.00:00:00")
                ]),
            ),
            1 => (
                "New-InboxRule",
                json!([
                    nv("Name", "Newsletters"),
                    nv("From", "news@vendor.example"),
                    nv("MoveToFolder", "Newsletters"),
                    nv("StopProcessingRules", "False")
                ]),
            ),
            2 => (
                "Add-MailboxPermission",
                json!([
                    nv(
                        "Identity",
                        "DiscoverySearchMailbox{D919BA05-46A6-415f-80AD-7E09334BB852}"
                    ),
                    nv(
                        "User",
                        "NT AUTHORITY\\SYSTEM (Microsoft.Exchange.ServiceHost)"
                    ),
                    nv("AccessRights", "FullAccess")
                ]),
            ),
            _ => (
                "Set-CASMailbox",
                json!([
                    nv("Identity", &owner),
                    nv("ImapEnabled", "False"),
                    nv("PopEnabled", "False")
                ]),
            ),
        };
        let actor = user(rng, ctx);
        let ip = client_ip(rng, false);
        return exchange_admin(rng, ctx, id, time, &actor, ip, cmdlet, &owner, params);
    }
    let user_key = format!("{:016X}", mix(hash_str(&owner), 5) >> 8);
    let ip = client_ip(rng, false);
    let ip_text = ip.as_str().unwrap_or("203.0.113.9").to_owned();
    let client_info = pick(
        rng,
        &[
            "Client=OWA;Action=ViaProxy",
            "Client=REST;Client=RESTSystem;;",
            "Client=MSExchangeRPC",
            "Client=OutlookService;Outlook-iOS/2.0;",
        ],
    );
    let (op, rt) = match roll {
        25..=54 => ("MailItemsAccessed", 50),
        55..=79 => (pick(rng, &["Send", "Update", "Create", "MailboxLogin"]), 2),
        _ => (
            pick(
                rng,
                &["MoveToDeletedItems", "SoftDelete", "HardDelete", "Move"],
            ),
            3,
        ),
    };
    let mut r = header(
        rng,
        ctx,
        id,
        time,
        op,
        rt,
        Some("Succeeded"),
        &user_key,
        0,
        "Exchange",
    );
    r.put("ClientIP", ip)
        .put("UserId", json!(owner))
        .put("AppId", json!("00000002-0000-0ff1-ce00-000000000000"))
        .put("ClientAppId", json!(""))
        .put("ClientIPAddress", json!(ip_text))
        .put("ClientInfoString", json!(client_info))
        .put("ExternalAccess", json!(false))
        .put("InternalLogonType", json!(0))
        .put("LogonType", json!(0))
        .put(
            "LogonUserSid",
            json!(format!(
                "S-1-5-21-{}-{}-{}-{}",
                rng.random_range(1000..9999),
                rng.random_range(1000..9999),
                rng.random_range(1000..9999),
                rng.random_range(1000..99999)
            )),
        )
        .put("MailboxGuid", json!(guid(hash_str(&owner))))
        .put("MailboxOwnerUPN", json!(owner))
        .put("OrganizationName", json!(ctx.domain))
        .put(
            "OriginatingServer",
            json!("DB9PR01MB0001 (15.20.7452.000)\r\n"),
        );
    let subject = pick(rng, SUBJECTS);
    match rt {
        50 => {
            let n = rng.random_range(1..6);
            let items: Vec<Value> = (0..n)
                .map(|_| json!({"InternetMessageId": format!("<{:X}@mail.{}>", rng.random::<u64>(), ctx.domain), "SizeInBytes": rng.random_range(2000..400000)}))
                .collect();
            r.put(
                "OperationProperties",
                json!([
                    nv("MailAccessType", pick(rng, &["Bind", "Sync"])),
                    nv("IsThrottled", "False")
                ]),
            )
            .put("OperationCount", json!(n))
            .put("SessionId", json!(guid(rng.random())))
            .put(
                "Folders",
                json!([{"Id": "LgAAAAAVyO2...", "Path": "\\Inbox", "FolderItems": items}]),
            );
        }
        2 => {
            r.put(
                "Item",
                json!({"Id": format!("RgAAAA{:X}", rng.random::<u64>()), "InternetMessageId": format!("<{:X}@mail.{}>", rng.random::<u64>(), ctx.domain), "ParentFolder": {"Name": "Sent Items", "Path": "\\Sent Items"}, "SizeInBytes": rng.random_range(2000..90000), "Subject": subject}),
            );
        }
        _ => {
            r.put("Folder", json!({"Id": "LgAAAAB...", "Path": "\\Inbox"}))
                .put("CrossMailboxOperation", json!(false))
                .put(
                    "AffectedItems",
                    json!([{"Id": format!("RgAAAA{:X}", rng.random::<u64>()), "Subject": subject, "ParentFolder": {"Path": "\\Inbox"}}]),
                );
        }
    }
    r.done()
}

/// A SharePoint file operation record.
#[allow(clippy::too_many_arguments)]
fn file_op(
    rng: &mut StdRng,
    ctx: &TenantCtx,
    id: &str,
    time: DateTime<Utc>,
    actor: &str,
    ip: Value,
    op: &str,
    file: &str,
) -> String {
    let tenant_short = ctx.domain.split('.').next().unwrap_or("contoso").to_owned();
    let onedrive = rng.random_range(0..5) == 0;
    let (site_url, workload, rt) = if onedrive {
        (
            format!(
                "https://{tenant_short}-my.sharepoint.com/personal/{}/",
                actor.replace(['@', '.'], "_")
            ),
            "OneDrive",
            6,
        )
    } else {
        (
            format!("https://{tenant_short}.sharepoint.com/sites/Finance/"),
            "SharePoint",
            6,
        )
    };
    let rel = "Shared Documents/Reports";
    let user_key = format!(
        "i:0h.f|membership|{:016x}@live.com",
        mix(hash_str(actor), 9)
    );
    let ext = file.rsplit('.').next().unwrap_or("");
    let mut r = header(rng, ctx, id, time, op, rt, None, &user_key, 0, workload);
    r.put("ClientIP", ip)
        .put("ObjectId", json!(format!("{site_url}{rel}/{file}")))
        .put("UserId", json!(actor))
        .put("CorrelationId", json!(guid(rng.random())))
        .put("EventSource", json!("SharePoint"))
        .put("ItemType", json!("File"))
        .put("ListId", json!(guid(hash_str(&site_url))))
        .put("ListItemUniqueId", json!(guid(hash_str(file))))
        .put("Site", json!(guid(hash_str(&site_url) ^ 1)))
        .put("UserAgent", json!(pick(rng, USER_AGENTS)))
        .put("WebId", json!(guid(hash_str(&site_url) ^ 2)))
        .put("SourceFileExtension", json!(ext))
        .put("SiteUrl", json!(site_url))
        .put("SourceFileName", json!(file))
        .put("SourceRelativeUrl", json!(rel));
    r.done()
}

fn sharepoint(rng: &mut StdRng, ctx: &TenantCtx, id: &str, time: DateTime<Utc>) -> String {
    let actor = user(rng, ctx);
    let ip = client_ip(rng, false);
    let file = pick(rng, FILES);
    let roll = rng.random_range(0..100);
    if roll < 75 {
        let op = pick(
            rng,
            &[
                "FileAccessed",
                "FileAccessed",
                "FileModified",
                "FileUploaded",
                "FileDownloaded",
                "FilePreviewed",
                "FileSyncDownloadedFull",
            ],
        );
        return file_op(rng, ctx, id, time, &actor, ip, op, file);
    }
    let tenant_short = ctx.domain.split('.').next().unwrap_or("contoso").to_owned();
    let site_url = format!("https://{tenant_short}.sharepoint.com/sites/Projects/");
    let user_key = format!(
        "i:0h.f|membership|{:016x}@live.com",
        mix(hash_str(&actor), 9)
    );
    if roll < 92 {
        let op = pick(
            rng,
            &[
                "SharingSet",
                "AnonymousLinkCreated",
                "SharingInvitationCreated",
                "CompanyLinkCreated",
            ],
        );
        let mut r = header(rng, ctx, id, time, op, 14, None, &user_key, 0, "SharePoint");
        r.put("ClientIP", ip)
            .put(
                "ObjectId",
                json!(format!("{site_url}Shared Documents/{file}")),
            )
            .put("UserId", json!(actor))
            .put("EventSource", json!("SharePoint"))
            .put("ItemType", json!("File"))
            .put("Site", json!(guid(hash_str(&site_url))))
            .put("UserAgent", json!(pick(rng, USER_AGENTS)))
            .put(
                "EventData",
                json!("<PermissionsGranted>Read</PermissionsGranted>"),
            )
            .put("SiteUrl", json!(site_url))
            .put("SourceFileName", json!(file))
            .put(
                "TargetUserOrGroupName",
                json!(pick(
                    rng,
                    &[
                        "partner@fabrikam.example",
                        "Limited Access System Group",
                        "guest_ext@outlook.example"
                    ]
                )),
            )
            .put(
                "TargetUserOrGroupType",
                json!(pick(rng, &["Guest", "Member", "SharePointGroup"])),
            )
            .put("UniqueSharingId", json!(guid(rng.random())));
        return r.done();
    }
    let op = pick(
        rng,
        &["SiteCollectionAdminAdded", "ListViewed", "PageViewed"],
    );
    let rt = if op == "SiteCollectionAdminAdded" {
        4
    } else {
        36
    };
    let mut r = header(rng, ctx, id, time, op, rt, None, &user_key, 0, "SharePoint");
    r.put("ClientIP", ip)
        .put("ObjectId", json!(site_url))
        .put("UserId", json!(actor))
        .put("EventSource", json!("SharePoint"))
        .put("ItemType", json!(if rt == 4 { "Site" } else { "List" }))
        .put("Site", json!(guid(hash_str(&site_url))))
        .put("UserAgent", json!(pick(rng, USER_AGENTS)))
        .put(
            "ModifiedProperties",
            json!([{"Name": "SiteAdmin", "NewValue": actor, "OldValue": ""}]),
        );
    r.done()
}

fn general(rng: &mut StdRng, ctx: &TenantCtx, id: &str, time: DateTime<Utc>) -> String {
    let actor = user(rng, ctx);
    let key = guid(hash_str(&actor));
    let roll = rng.random_range(0..100);
    match roll {
        0..=44 => {
            let op = pick(
                rng,
                &[
                    "TeamsSessionStarted",
                    "MessageSent",
                    "MemberAdded",
                    "ChannelAdded",
                    "MeetingDetail",
                ],
            );
            let mut r = header(rng, ctx, id, time, op, 25, None, &key, 0, "MicrosoftTeams");
            r.put("ClientIP", client_ip(rng, false))
                .put("UserId", json!(actor))
                .put("CommunicationType", json!("Team"))
                .put(
                    "TeamName",
                    json!(pick(
                        rng,
                        &["Vertrieb DACH", "営業チーム", "Finance", "Équipe Projet"]
                    )),
                )
                .put(
                    "TeamGuid",
                    json!(format!("19:{:x}@thread.tacv2", rng.random::<u64>())),
                );
            if op == "MemberAdded" {
                // Large records: many members added at once.
                let n = rng.random_range(40..120);
                let members: Vec<Value> = (0..n)
                    .map(|i| json!({"DisplayName": DISPLAY_NAMES[i % DISPLAY_NAMES.len()], "Role": 1, "UPN": format!("member{i}@{}", ctx.domain)}))
                    .collect();
                r.put("Members", json!(members));
            }
            r.done()
        }
        45..=54 => {
            // Security & Compliance cmdlet: Parameters is one string here.
            let mut r = header(
                rng,
                ctx,
                id,
                time,
                "Get-ComplianceSearch",
                18,
                Some("True"),
                &key,
                2,
                "SecurityComplianceCenter",
            );
            r.put("ClientIP", client_ip(rng, false))
                .put("ObjectId", json!(""))
                .put("UserId", json!(actor))
                .put("ClientApplication", json!("EMC"))
                .put("CmdletVersion", json!(""))
                .put("EffectiveOrganization", json!(ctx.domain))
                .put(
                    "Parameters",
                    json!("-Identity \"Legal hold – Q3\" -ResultSize \"Unlimited\""),
                )
                .put("SecurityComplianceCenterEventType", json!(0))
                .put("StartTime", json!(creation_time(time)));
            r.done()
        }
        55..=64 => {
            let mut r = header(
                rng,
                ctx,
                id,
                time,
                "AlertTriggered",
                40,
                Some("Succeeded"),
                "SecurityComplianceAlerts",
                4,
                "SecurityComplianceCenter",
            );
            r.put("ObjectId", json!(guid(rng.random())))
                .put("UserId", json!("SecurityComplianceAlerts"))
                .put("AlertId", json!(guid(rng.random())))
                .put("AlertLinks", json!([{"AlertLinkHref": ""}]))
                .put("AlertType", json!("System"))
                .put(
                    "Category",
                    json!(pick(rng, &["ThreatManagement", "DataGovernance", "Other"])),
                )
                .put("Comments", json!("New alert"))
                .put(
                    "Data",
                    json!(format!(
                        "{{\"f3u\":\"{actor}\",\"ts\":\"{}\"}}",
                        creation_time(time)
                    )),
                )
                .put(
                    "Name",
                    json!(pick(
                        rng,
                        &[
                            "Email messages containing malicious URL removed after delivery",
                            "User restricted from sending email",
                            "Elevation of Exchange admin privilege"
                        ]
                    )),
                )
                .put("PolicyId", json!(guid(rng.random())))
                .put(
                    "Severity",
                    json!(pick(rng, &["Low", "Medium", "High", "Informational"])),
                )
                .put("Source", json!("Office 365 Security & Compliance"))
                .put("Status", json!("Active"));
            r.done()
        }
        65..=79 => {
            let op = pick(rng, &["ViewReport", "ExportReport", "ViewDashboard"]);
            let mut r = header(rng, ctx, id, time, op, 20, None, &key, 0, "PowerBI");
            r.put("ClientIP", client_ip(rng, false))
                .put("UserId", json!(actor))
                .put("Activity", json!("ViewReport"))
                .put("ItemName", json!("Umsatz Übersicht"))
                .put("WorkSpaceName", json!("Finance"))
                .put("DatasetName", json!("Sales"))
                .put("IsSuccess", json!(true))
                .put("RequestId", json!(guid(rng.random())));
            r.done()
        }
        80..=91 => {
            let mut r = header(
                rng,
                ctx,
                id,
                time,
                "CopilotInteraction",
                261,
                None,
                &key,
                0,
                "Copilot",
            );
            r.put("UserId", json!(actor))
                .put("ClientIP", client_ip(rng, false))
                .put("CopilotEventData", json!({"AppHost": "Teams", "Contexts": [{"Id": "https://teams.microsoft.com/", "Type": "TeamsMeeting"}], "ThreadId": format!("19:{:x}", rng.random::<u64>())}));
            r.done()
        }
        _ => {
            // A record type this collector has never heard of, with unknown fields.
            let mut r = header(
                rng,
                ctx,
                id,
                time,
                "FutureOperationExecuted",
                999,
                Some("Succeeded"),
                &key,
                0,
                "FutureWorkload",
            );
            r.put("ClientIP", client_ip(rng, true))
                .put("UserId", json!(actor))
                .put("NewShinyField", json!({"Nested": [1, 2, 3], "Flag": true}))
                .put("AnotherUnknown", json!("ünïcödé ✓"));
            r.done()
        }
    }
}

fn sensitive_info(rng: &mut StdRng, n: usize) -> Value {
    let types = [
        ("50842eb7-edc8-4019-85dd-5a5c1f2bb085", "Credit Card Number"),
        (
            "a44669fe-0d48-453d-a9b1-2cc83f2cba77",
            "U.S. Social Security Number (SSN)",
        ),
        (
            "e7dc4711-11b7-4cb0-b88b-2c394a771f0e",
            "International Banking Account Number (IBAN)",
        ),
    ];
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let (guid_s, name) = types[i % types.len()];
            let detections: Vec<Value> = (0..rng.random_range(1..8))
                .map(|_| json!({"Name": name, "Value": format!("XXXX-XXXX-XXXX-{:04}", rng.random_range(0..9999)), "Context": "Kartennummer / card number listed in the attached spreadsheet – please process"}))
                .collect();
            json!({"Confidence": rng.random_range(65..100), "Count": detections.len(), "Location": "", "SensitiveType": guid_s, "SensitiveInformationTypeName": name,
                   "SensitiveInformationDetections": {"DetectedValues": detections, "ResultsTruncated": false},
                   "SensitiveInformationDetailedClassificationAttributes": [{"Confidence": 85, "Count": 1, "IsMatch": true}], "UniqueCount": 1})
        })
        .collect();
    Value::Array(entries)
}

fn dlp(rng: &mut StdRng, ctx: &TenantCtx, id: &str, time: DateTime<Utc>) -> String {
    let actor = user(rng, ctx);
    let roll = rng.random_range(0..100);
    let (rt, workload) = match roll {
        0..=34 => (13, "Exchange"),
        35..=74 => (11, "SharePoint"),
        _ => (63, "Endpoint"),
    };
    let op = if rt == 11 && rng.random_range(0..10) == 0 {
        "DlpRuleUndo"
    } else {
        "DlpRuleMatch"
    };
    let mut r = header(rng, ctx, id, time, op, rt, None, "DlpAgent", 4, workload);
    r.put(
        "ObjectId",
        json!(format!("<{:X}@mail.{}>", rng.random::<u64>(), ctx.domain)),
    )
    .put("UserId", json!(actor))
    .put("IncidentId", json!(guid(rng.random())));
    let n = rng.random_range(3..25);
    let info = sensitive_info(rng, n);
    r.put(
        "PolicyDetails",
        json!([{"PolicyId": guid(rng.random()), "PolicyName": "PCI-DSS – Kreditkarten", "Rules": [{"RuleId": guid(rng.random()), "RuleName": "Low volume of content detected", "Actions": ["NotifyUser", "GenerateIncidentReport"], "OverriddenActions": [], "Severity": pick(rng, &["Low", "Medium", "High"]), "RuleMode": "Enforce", "ConditionsMatched": {"SensitiveInformation": info, "DocumentProperties": [], "OtherConditions": []}}]}]),
    )
    .put("SensitiveInfoDetectionIsIncluded", json!(true));
    match rt {
        13 => {
            r.put("ExchangeMetaData", json!({"BCC": [], "CC": [], "From": actor, "MessageID": format!("<{:X}@mail.{}>", rng.random::<u64>(), ctx.domain), "RecipientCount": 2, "Sent": creation_time(time), "Subject": pick(rng, SUBJECTS), "To": ["partner@fabrikam.example"], "UniqueID": guid(rng.random())}));
        }
        11 => {
            r.put("SharePointMetaData", json!({"FileName": pick(rng, FILES), "FileOwner": actor, "FilePathUrl": format!("https://{}.sharepoint.com/sites/Finance/Shared Documents/", ctx.domain.split('.').next().unwrap_or("contoso")), "From": actor, "IsViewableByExternalUsers": false, "ItemCreationTime": creation_time(time), "SiteCollectionGuid": guid(rng.random()), "UniqueID": guid(rng.random())}));
        }
        _ => {
            r.put("EndpointMetaData", json!({"DeviceName": format!("LAPTOP-{:06X}", rng.random_range(0..0xffffff)), "EnforcementMode": rng.random_range(1..5), "FileExtension": "xlsx", "FileType": "Excel"}));
        }
    }
    r.done()
}

/// One record of the intrusion scenario.
#[derive(Clone, Debug)]
pub(crate) struct ScenarioRecord {
    pub(crate) step: &'static str,
    pub(crate) content_type: ContentType,
    pub(crate) time: DateTime<Utc>,
    pub(crate) id: String,
    pub(crate) bytes: String,
}

/// Build the intrusion story starting at `start`.
pub(crate) fn intrusion(
    ctx: &TenantCtx,
    spec: &Intrusion,
    start: DateTime<Utc>,
    seed: u64,
) -> Vec<ScenarioRecord> {
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x1a7));
    let mut out = Vec::new();
    let attacker = Value::String(spec.attacker_ip.clone());
    let victim = format!("finance.manager@{}", ctx.domain);
    let mut t = start;
    let mut push =
        |step: &'static str, ct: ContentType, time: DateTime<Utc>, id: String, bytes: String| {
            out.push(ScenarioRecord {
                step,
                content_type: ct,
                time,
                id,
                bytes,
            });
        };
    for i in 0..spec.sprayed_accounts {
        let id = guid(rng.random());
        let upn = format!("{}{i}@{}", USERS[i % USERS.len()], ctx.domain);
        let logon = Logon {
            user: &upn,
            ip: attacker.clone(),
            failure: Some(("50126", "InvalidUserNameOrPassword")),
            user_agent: "python-requests/2.31.0",
            result_status: "Success",
        };
        let bytes = sts_logon(&mut rng, ctx, &id, t, &logon);
        push(
            "password_spray",
            ContentType::AzureActiveDirectory,
            t,
            id,
            bytes,
        );
        t += Duration::seconds(7);
    }
    let id = guid(rng.random());
    let logon = Logon {
        user: &victim,
        ip: attacker.clone(),
        failure: None,
        user_agent: "python-requests/2.31.0",
        result_status: "Success",
    };
    let bytes = sts_logon(&mut rng, ctx, &id, t, &logon);
    push(
        "spray_success",
        ContentType::AzureActiveDirectory,
        t,
        id,
        bytes,
    );
    t += Duration::minutes(4);
    let id = guid(rng.random());
    let params = json!([
        nv("Name", "."),
        nv("ForwardTo", &spec.forward_to),
        nv("MarkAsRead", "True"),
        nv("DeleteMessage", "True"),
        nv("StopProcessingRules", "True")
    ]);
    let bytes = exchange_admin(
        &mut rng,
        ctx,
        &id,
        t,
        &victim,
        attacker.clone(),
        "New-InboxRule",
        &format!("{victim}\\."),
        params,
    );
    push("inbox_rule_forwarding", ContentType::Exchange, t, id, bytes);
    t += Duration::minutes(2);
    let id = guid(rng.random());
    let params = json!([
        nv("Identity", &format!("ceo@{}", ctx.domain)),
        nv("User", &victim),
        nv("AccessRights", "FullAccess"),
        nv("InheritanceType", "All"),
        nv("AutoMapping", "False")
    ]);
    let bytes = exchange_admin(
        &mut rng,
        ctx,
        &id,
        t,
        &victim,
        attacker.clone(),
        "Add-MailboxPermission",
        &format!("ceo@{}", ctx.domain),
        params,
    );
    push("mailbox_permission", ContentType::Exchange, t, id, bytes);
    t += Duration::minutes(3);
    for i in 0..spec.downloads {
        let id = guid(rng.random());
        let file = format!(
            "{}-{i:03}.{}",
            pick(
                &mut rng,
                &["Payroll", "Customer list", "M&A memo", "Kundenliste"]
            ),
            pick(&mut rng, &["xlsx", "docx", "pdf"])
        );
        let bytes = file_op(
            &mut rng,
            ctx,
            &id,
            t,
            &victim,
            attacker.clone(),
            "FileDownloaded",
            &file,
        );
        push("mass_download", ContentType::SharePoint, t, id, bytes);
        t += Duration::seconds(3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TenantCtx {
        TenantCtx {
            tenant_id: "11111111-2222-3333-4444-555555555555".to_owned(),
            domain: "contoso.onmicrosoft.com".to_owned(),
        }
    }

    // Proves every generated record is valid JSON carrying its derived Id, and that the
    // same seed gives the same bytes.
    #[test]
    fn records_are_json_and_deterministic() {
        let now = Utc::now();
        for ct in ContentType::ALL {
            for seed in 0..300u64 {
                let a = generate(&ctx(), ct, now, seed);
                let b = generate(&ctx(), ct, now, seed);
                assert_eq!(a, b);
                let v: Value = serde_json::from_str(&a).expect("valid JSON");
                assert_eq!(v["Id"], json!(record_id(seed)));
                assert!(
                    v["CreationTime"]
                        .as_str()
                        .is_some_and(|s| !s.ends_with('Z'))
                );
            }
        }
    }

    // Proves the intrusion story contains every step, with the forwarding rule pointing
    // outside and one successful sign-in from the attacker IP.
    #[test]
    fn intrusion_has_all_steps() {
        let recs = intrusion(&ctx(), &Intrusion::default(), Utc::now(), 1);
        for step in [
            "password_spray",
            "spray_success",
            "inbox_rule_forwarding",
            "mailbox_permission",
            "mass_download",
        ] {
            assert!(recs.iter().any(|r| r.step == step), "missing {step}");
        }
        let rule = recs
            .iter()
            .find(|r| r.step == "inbox_rule_forwarding")
            .expect("rule");
        assert!(rule.bytes.contains("collect@exfil-mail.example"));
        let ok = recs.iter().filter(|r| r.step == "spray_success").count();
        assert_eq!(ok, 1);
    }
}
