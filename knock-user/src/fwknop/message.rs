//! The plaintext of an SPA packet: its fields, what fwknop allows in each,
//! and the digest that closes it.
//!
//! `random:user:timestamp:version:type:message[:nat_access][:server_auth][:client_timeout]:digest`
//! (lib/fko_encode.c writes the fields in that order, lib/fko_decode.c reads
//! them back): `nat_access` is there for the NAT types only and
//! `client_timeout` for the client-timeout types only, both required there;
//! `server_auth` is optional for every type. `user`, `message`, `nat_access`
//! and `server_auth` are base64 without padding, the others plain ASCII.

use std::{
    fmt::{self, Write as _},
    net::Ipv4Addr,
};

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq as _;

use super::errors::{Refusal, SealError};

/// The protocol version the fwknop 2.6 client writes (libfko's
/// `FKO_PROTOCOL_VERSION`).
pub const PROTOCOL_VERSION: &str = "3.0.0";

/// Digits of the random value opening every plaintext.
const RANDOM_DIGITS: usize = 16;
/// Plaintext sizes libfko accepts (`MIN_SPA_PLAINTEXT_MSG_SIZE`, and
/// below `MAX_SPA_PLAINTEXT_MSG_SIZE`).
const MIN_PLAINTEXT_BYTES: usize = 36;
const MAX_PLAINTEXT_BYTES: usize = 1499;
/// Longest fields, in characters as they stand in the plaintext (base64 for
/// the encoded ones), from lib/fko_limits.h.
const MAX_USER_CHARS: usize = 64;
const MAX_TIMESTAMP_CHARS: usize = 12;
const MAX_VERSION_CHARS: usize = 8;
const MAX_TYPE_CHARS: usize = 2;
/// `message`, `nat_access`, `server_auth` and `client_timeout`.
const MAX_FIELD_CHARS: usize = 256;
/// Longest NAT host name (`MAX_HOSTNAME_LEN`).
const MAX_NAT_HOST_CHARS: usize = 70;
/// Longest client timeout fwknopd takes, in seconds (`2 << 15`).
pub const MAX_CLIENT_TIMEOUT: u32 = 65536;

/// What an SPA packet asks for, with libfko's numbers
/// (`fko_message_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Run a command on the server (`-C`); the message is `IP,command`.
    Command = 0,
    /// Open ports for an address; the message is `IP,proto/port[,...]`.
    Access = 1,
    /// Forward a port to an internal host (`-N`).
    NatAccess = 2,
    /// `Access` with a timeout chosen by the client (`-f`).
    ClientTimeoutAccess = 3,
    /// `NatAccess` with a timeout chosen by the client.
    ClientTimeoutNatAccess = 4,
    /// Forward a port to a service of the server itself (`--nat-local`).
    LocalNatAccess = 5,
    /// `LocalNatAccess` with a timeout chosen by the client.
    ClientTimeoutLocalNatAccess = 6,
}

impl MessageType {
    /// libfko's number for the type, as the plaintext carries it.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The type of libfko's number `n`, if there is one.
    pub fn from_number(n: u8) -> Option<MessageType> {
        Some(match n {
            0 => MessageType::Command,
            1 => MessageType::Access,
            2 => MessageType::NatAccess,
            3 => MessageType::ClientTimeoutAccess,
            4 => MessageType::ClientTimeoutNatAccess,
            5 => MessageType::LocalNatAccess,
            6 => MessageType::ClientTimeoutLocalNatAccess,
            _ => return None,
        })
    }

    /// Whether the message is an access request (`IP,proto/port...`):
    /// every type but `Command`.
    pub fn is_access(self) -> bool {
        self != MessageType::Command
    }

    /// Whether the plaintext carries a `nat_access` field.
    pub fn has_nat(self) -> bool {
        matches!(
            self,
            MessageType::NatAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::LocalNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    /// Whether the plaintext carries a `client_timeout` field.
    pub fn has_client_timeout(self) -> bool {
        matches!(
            self,
            MessageType::ClientTimeoutAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }
}

/// A protocol an access request opens a port for. fwknop also lets a
/// request name `icmp` or `none`; such a request is refused here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An access request: the address to let in and the ports to open,
/// written `IP,proto/port[,proto/port...]` (`-A tcp/22,udp/53`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// fwknop messages carry IPv4 only. `0.0.0.0` (the client's `-s`) asks
    /// the server to let in the packet's source address; it is kept as such
    /// here, and the caller decides (fwknopd refuses it where a stanza says
    /// `REQUIRE_SOURCE_ADDRESS`).
    pub addr: Ipv4Addr,
    /// At least one, in the order of the request.
    pub ports: Vec<(Proto, u16)>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        self.ports
            .iter()
            .try_for_each(|(proto, port)| write!(f, ",{proto}/{port}"))
    }
}

impl Access {
    /// Parses an access message as libfko validates it
    /// (`validate_access_msg`), less what this codec does not handle:
    /// protocols other than TCP and UDP.
    fn parse(text: &str) -> Result<Access, &'static str> {
        let (addr, specs) = text
            .split_once(',')
            .ok_or("an access message without ports")?;
        let ports = specs
            .split(',')
            .map(|spec| {
                let (proto, port) = spec.split_once('/').ok_or("a port without protocol")?;
                let proto = match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return Err("a protocol other than tcp and udp"),
                };
                Ok((proto, parse_port(port)?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Access {
            addr: parse_ipv4(addr)?,
            ports,
        })
    }

    /// Whether fwknopd would take this request: at least one port, none 0.
    fn check(&self) -> Result<(), &'static str> {
        if self.ports.is_empty() {
            return Err("an access request without ports");
        }
        if self.ports.iter().any(|&(_, port)| port == 0) {
            return Err("port 0");
        }
        Ok(())
    }
}

/// The hash behind a plaintext's digest. fwknopd tells them apart by the
/// digest's length, SHA-256 from SHA3-256 and SHA-512 from SHA3-512 by
/// trying both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestType {
    Md5,
    Sha1,
    /// What the fwknop client uses unless told otherwise (`-m`).
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_512,
}

impl DigestType {
    /// The base64 (no padding) digest of `data`.
    pub(super) fn digest(self, data: &[u8]) -> String {
        fn encode<D: Digest>(data: &[u8]) -> String {
            STANDARD_NO_PAD.encode(D::digest(data))
        }
        match self {
            DigestType::Md5 => encode::<md5::Md5>(data),
            DigestType::Sha1 => encode::<sha1::Sha1>(data),
            DigestType::Sha256 => encode::<Sha256>(data),
            DigestType::Sha384 => encode::<Sha384>(data),
            DigestType::Sha512 => encode::<Sha512>(data),
            DigestType::Sha3_256 => encode::<sha3::Sha3_256>(data),
            DigestType::Sha3_512 => encode::<sha3::Sha3_512>(data),
        }
    }

    /// The hashes whose base64 digests are `chars` characters long.
    fn of_length(chars: usize) -> &'static [DigestType] {
        match chars {
            22 => &[DigestType::Md5],
            27 => &[DigestType::Sha1],
            43 => &[DigestType::Sha256, DigestType::Sha3_256],
            64 => &[DigestType::Sha384],
            86 => &[DigestType::Sha512, DigestType::Sha3_512],
            _ => &[],
        }
    }
}

/// An SPA packet's content, once authenticated, decrypted and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The 16 random digits that open the plaintext.
    pub random: String,
    /// The user the client names (`-U`, by default its login name).
    pub user: String,
    /// The client's clock when it made the packet, in Unix seconds
    /// (`--time-offset-plus`/`-minus` move it). The format carries 0 to
    /// `u32::MAX`; fwknopd 2.6.10 itself refuses times past `i32::MAX`.
    pub timestamp: i64,
    /// The client's protocol version, `3.0.0` for fwknop 2.5 and later;
    /// fwknopd does not check it.
    pub version: String,
    pub message_type: MessageType,
    /// The decoded message: `IP,proto/port...` for the access types,
    /// `IP,command` for `Command`.
    pub message: String,
    /// The message parsed, for the access types; `None` for `Command`.
    pub access: Option<Access>,
    /// `host,port` to forward to, for the NAT types.
    pub nat_access: Option<String>,
    /// The optional server authentication field, decoded.
    pub server_auth: Option<String>,
    /// Seconds the client asks the rule to last, for the client-timeout
    /// types: 1 to [`MAX_CLIENT_TIMEOUT`].
    pub client_timeout: Option<u32>,
    /// The hash the client closed the plaintext with.
    pub digest: DigestType,
}

/// What xknock's client asks fwknopd for: an access request, with a client
/// timeout or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Printable ASCII but for `"/\[]:;|=,+*?<>`, at most 48 bytes.
    pub user: String,
    /// Unix seconds, 0 to `u32::MAX` (fwknopd takes up to `i32::MAX`).
    pub timestamp: i64,
    /// At most 192 bytes written out.
    pub access: Access,
    /// 1 to [`MAX_CLIENT_TIMEOUT`] seconds; `Some` makes the packet a
    /// `ClientTimeoutAccess`, `None` an `Access`.
    pub client_timeout: Option<u32>,
}

/// A decrypted plaintext, checked field by field and against its digest.
pub(super) fn parse(plaintext: &[u8]) -> Result<Request, Refusal> {
    if !(MIN_PLAINTEXT_BYTES..=MAX_PLAINTEXT_BYTES).contains(&plaintext.len()) {
        return Err(Refusal::malformed(format!(
            "a plaintext of {} bytes",
            plaintext.len()
        )));
    }
    // What libfko requires of the whole (`isprint`); it also makes the
    // text ASCII, so no field below can split a character.
    if !plaintext.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(Refusal::malformed(
            "a plaintext that is not printable ASCII",
        ));
    }
    let text = std::str::from_utf8(plaintext)
        .map_err(|_| Refusal::malformed("a plaintext that is not printable ASCII"))?;
    let (signed, digest) = text
        .rsplit_once(':')
        .ok_or_else(|| Refusal::malformed("a plaintext without fields"))?;
    let digest = check_digest(signed, digest)?;

    let fields: Vec<&str> = signed.split(':').collect();
    let [
        random,
        user,
        timestamp,
        version,
        message_type,
        message,
        rest @ ..,
    ] = fields.as_slice()
    else {
        return Err(Refusal::malformed("too few fields"));
    };
    let message_type = decimal(message_type, MAX_TYPE_CHARS)
        .and_then(|n| u8::try_from(n).ok())
        .and_then(MessageType::from_number)
        .ok_or_else(|| Refusal::malformed("an unknown message type"))?;

    // The fields after the message: the NAT one first, the timeout last,
    // the server authentication, if any, between them.
    let mut rest = rest;
    let nat_access = match (message_type.has_nat(), rest.split_first()) {
        (false, _) => None,
        (true, Some((nat, tail))) => {
            rest = tail;
            Some(text_field(nat, MAX_FIELD_CHARS, "NAT access")?)
        }
        (true, None) => return Err(Refusal::malformed("a NAT type without NAT access")),
    };
    let client_timeout = match (message_type.has_client_timeout(), rest.split_last()) {
        (false, _) => None,
        (true, Some((timeout, init))) => {
            rest = init;
            Some(
                decimal(timeout, MAX_FIELD_CHARS)
                    .filter(|t| (1..=u64::from(MAX_CLIENT_TIMEOUT)).contains(t))
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| Refusal::malformed("a bad client timeout"))?,
            )
        }
        (true, None) => return Err(Refusal::malformed("a client-timeout type without timeout")),
    };
    let server_auth = match rest {
        [] => None,
        [auth] => Some(text_field(auth, MAX_FIELD_CHARS, "server authentication")?),
        _ => return Err(Refusal::malformed("too many fields for the message type")),
    };

    if random.len() != RANDOM_DIGITS || !random.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::malformed("a random value that is not 16 digits"));
    }
    let user = text_field(user, MAX_USER_CHARS, "user")?;
    check_user(&user).map_err(Refusal::malformed)?;
    let timestamp = decimal(timestamp, MAX_TIMESTAMP_CHARS)
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| Refusal::malformed("a bad timestamp"))?;
    if version.is_empty() || version.len() > MAX_VERSION_CHARS {
        return Err(Refusal::malformed("a bad version"));
    }
    let message = text_field(message, MAX_FIELD_CHARS, "message")?;
    let access = if message_type.is_access() {
        Some(Access::parse(&message).map_err(Refusal::malformed)?)
    } else {
        check_command(&message).map_err(Refusal::malformed)?;
        None
    };
    if let Some(nat) = &nat_access {
        check_nat_access(nat).map_err(Refusal::malformed)?;
    }

    Ok(Request {
        random: (*random).to_owned(),
        user,
        timestamp: i64::from(timestamp),
        version: (*version).to_owned(),
        message_type,
        message,
        access,
        nat_access,
        server_auth,
        client_timeout,
        digest,
    })
}

/// The plaintext for `outgoing`, with the given random digits, closed by
/// its SHA-256 digest.
pub(super) fn build(outgoing: &Outgoing, random: &str) -> Result<String, SealError> {
    let invalid = |why: &str| SealError::Invalid(why.to_owned());
    if random.len() != RANDOM_DIGITS || !random.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("a random value that is not 16 digits"));
    }
    check_user(&outgoing.user).map_err(invalid)?;
    let user = STANDARD_NO_PAD.encode(&outgoing.user);
    if user.len() > MAX_USER_CHARS {
        return Err(invalid("a user name longer than 48 bytes"));
    }
    let timestamp = u32::try_from(outgoing.timestamp)
        .map_err(|_| invalid("a timestamp out of 0..=u32::MAX"))?;
    outgoing.access.check().map_err(invalid)?;
    let message = STANDARD_NO_PAD.encode(outgoing.access.to_string());
    if message.len() > MAX_FIELD_CHARS {
        return Err(invalid("an access request longer than 192 bytes"));
    }
    let message_type = match outgoing.client_timeout {
        None => MessageType::Access,
        Some(1..=MAX_CLIENT_TIMEOUT) => MessageType::ClientTimeoutAccess,
        Some(_) => return Err(invalid("a client timeout out of 1..=65536")),
    };

    let mut text = format!(
        "{random}:{user}:{timestamp}:{PROTOCOL_VERSION}:{}:{message}",
        message_type.number()
    );
    if let Some(timeout) = outgoing.client_timeout {
        // Writing to a String cannot fail.
        let _ = write!(text, ":{timeout}");
    }
    let digest = DigestType::Sha256.digest(text.as_bytes());
    text.push(':');
    text.push_str(&digest);
    Ok(text)
}

/// 16 random decimal digits, uniformly drawn.
pub(super) fn random_digits() -> Result<String, getrandom::Error> {
    const SPAN: u64 = 10_u64.pow(RANDOM_DIGITS as u32);
    // Values below LIMIT fall evenly on each residue modulo SPAN.
    const LIMIT: u64 = u64::MAX - u64::MAX % SPAN;
    loop {
        let value = getrandom::u64()?;
        if value < LIMIT {
            return Ok(format!("{:016}", value % SPAN));
        }
    }
}

/// The digest type whose digest of `signed` is `digest`, compared as
/// libfko compares them: as base64 text, in constant time.
fn check_digest(signed: &str, digest: &str) -> Result<DigestType, Refusal> {
    let candidates = DigestType::of_length(digest.len());
    if candidates.is_empty() {
        return Err(Refusal::malformed(format!(
            "a digest of {} characters",
            digest.len()
        )));
    }
    candidates
        .iter()
        .copied()
        .find(|kind| {
            bool::from(
                kind.digest(signed.as_bytes())
                    .as_bytes()
                    .ct_eq(digest.as_bytes()),
            )
        })
        .ok_or_else(|| Refusal::malformed("a digest that does not match"))
}

/// A base64 field decoded: canonical base64 without padding, at most `max`
/// characters, text without control characters (C would stop at a NUL).
fn text_field(field: &str, max: usize, what: &str) -> Result<String, Refusal> {
    let bad = || Refusal::malformed(format!("a bad {what} field"));
    if field.is_empty() || field.len() > max {
        return Err(bad());
    }
    let bytes = STANDARD_NO_PAD.decode(field).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(text)
}

/// An unsigned decimal of 1 to `max` digits, digits only (no sign, no
/// space, which C's `strtol` would also take).
fn decimal(field: &str, max: usize) -> Option<u64> {
    if field.is_empty() || field.len() > max || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

/// A port as libfko takes it: 1 to 5 digits, 1 to 65535.
fn parse_port(text: &str) -> Result<u16, &'static str> {
    decimal(text, 5)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
        .ok_or("a bad port")
}

/// A dotted-quad IPv4 address, as the fwknop client writes it.
fn parse_ipv4(text: &str) -> Result<Ipv4Addr, &'static str> {
    // Rust's parser takes only the four-decimal form, no leading zeros
    // (which inet_aton would read as octal).
    text.parse().map_err(|_| "a bad IPv4 address")
}

/// A user name libfko accepts (`validate_username`): printable ASCII but
/// for `"/\[]:;|=,+*?<>`.
fn check_user(user: &str) -> Result<(), &'static str> {
    const FORBIDDEN: &[u8] = b"\"/\\[]:;|=,+*?<>";
    if user.is_empty() {
        return Err("an empty user name");
    }
    if !user
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && !FORBIDDEN.contains(&b))
    {
        return Err("a user name with a character fwknop forbids");
    }
    Ok(())
}

/// A command message libfko accepts (`validate_cmd_msg`): `IP,command`.
fn check_command(message: &str) -> Result<(), &'static str> {
    let (addr, command) = message
        .split_once(',')
        .ok_or("a command message without command")?;
    parse_ipv4(addr)?;
    if command.is_empty() {
        return Err("a command message without command");
    }
    Ok(())
}

/// A NAT access field libfko accepts (`validate_nat_access_msg`):
/// `host,port`, the host without spaces, slashes or quotes.
fn check_nat_access(nat: &str) -> Result<(), &'static str> {
    let (host, port) = nat.split_once(',').ok_or("a NAT access without port")?;
    if host.is_empty()
        || host.len() > MAX_NAT_HOST_CHARS
        || host.contains([' ', '/', '?', '"', '\'', '\\'])
    {
        return Err("a bad NAT host");
    }
    parse_port(port).map(|_| ())
}
