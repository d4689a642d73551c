//! fwknop's Single Packet Authorization (SPA) packets, as the fwknop 2.6
//! client sends them and fwknopd accepts them (FKO protocol 3.0.0, Rijndael
//! with an HMAC-SHA256): [`open`] checks and decodes one, [`seal`] makes
//! one. Written from the format, with no code of fwknop's.
//!
//! The format, for a reader without fwknop's sources:
//!
//! - The plaintext is printable ASCII, fields separated by `:`:
//!   `random:user:timestamp:version:type:message[:nat_access][:server_auth][:client_timeout]:digest`
//!   (message.rs says what each field holds). `digest` is the base64 of a
//!   hash of all that comes before its `:`: SHA-256 unless the client was
//!   told otherwise; fwknopd also takes MD5, SHA-1, SHA-384, SHA-512,
//!   SHA3-256 and SHA3-512, told apart by length.
//! - The ciphertext is OpenSSL's `enc` format: `Salted__`, an 8-byte random
//!   salt, then the plaintext encrypted with AES-256-CBC and PKCS#7
//!   padding, under the key and IV that `EVP_BytesToKey` (MD5, one round)
//!   derives from the encryption key's bytes and the salt.
//! - On the wire, a UDP payload of ASCII only: the ciphertext's base64
//!   less its first 10 characters (`U2FsdGVkX1`, the same in every packet),
//!   then the 43-character base64 of an HMAC-SHA256, under the HMAC key, of
//!   the ciphertext's whole base64 (`U2FsdGVkX1` included). No base64 in
//!   the format has `=` padding.
//!
//! [`open`] checks the HMAC before it decodes or decrypts anything, as
//! fwknopd does, then the padding, every field and the digest, and refuses
//! more than fwknopd where fwknop's own client never writes it (non-canonical
//! base64, empty fields, protocols other than TCP and UDP). A packet it
//! opens is not yet a permission: the caller checks its age, the user and
//! what it asks for, and remembers [`replay_key`] to refuse it a second
//! time.

mod cipher;
mod errors;
mod message;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{
    Engine as _,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use hmac::{Hmac, KeyInit as _};
use sha2::{Digest as _, Sha256};

pub use errors::{Refusal, SealError};
pub use message::{
    Access, DigestType, MAX_CLIENT_TIMEOUT, MessageType, Outgoing, PROTOCOL_VERSION, Proto, Request,
};

/// Shortest payload fwknopd looks at (`MIN_SPA_DATA_SIZE`): anything
/// shorter is not SPA data to it.
pub const MIN_PACKET_BYTES: usize = 140;
/// Longest payload fwknopd accepts: it captures up to 1500 bytes
/// (`MAX_SPA_PACKET_LEN`), but libfko refuses 1500 or more
/// (`MAX_SPA_ENCODED_MSG_SIZE`).
pub const MAX_PACKET_BYTES: usize = 1499;

/// The two secrets of an fwknop access stanza, as bytes: `KEY_BASE64` and
/// `HMAC_KEY_BASE64` decoded, or the `KEY` and `HMAC_KEY` passphrases as
/// they are. Only HMAC-SHA256 is supported (`HMAC_DIGEST_TYPE sha256`, the
/// default).
#[derive(Clone)]
pub struct Keys {
    encryption: Vec<u8>,
    /// HMAC-SHA256 keyed once, cloned for each tag.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// Why keys are not ones fwknop would use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "an encryption key of {0} bytes; fwknop takes 1 to {max}",
        max = Keys::MAX_ENCRYPTION_BYTES
    )]
    EncryptionLength(usize),
    #[error("an HMAC key of {0} bytes; fwknop takes 1 to {max}", max = Keys::MAX_HMAC_BYTES)]
    HmacLength(usize),
    #[error("the encryption and HMAC keys are the same, which fwknop refuses")]
    Identical,
    #[error("the {0} key is not base64")]
    Base64(&'static str),
}

impl Keys {
    /// Longest encryption key: AES-256's key size, which libfko enforces
    /// (`RIJNDAEL_MAX_KEYSIZE`); shorter keys go as they are into the key
    /// derivation.
    pub const MAX_ENCRYPTION_BYTES: usize = 32;
    /// Longest HMAC key the fwknop client takes (`MAX_KEY_LEN`); `fwknop
    /// --key-gen` makes 64 bytes.
    pub const MAX_HMAC_BYTES: usize = 128;

    /// Keys from their bytes, with fwknop's limits: 1 to 32 bytes of
    /// encryption key, 1 to 128 of HMAC key, and not the same key twice.
    pub fn new(encryption: Vec<u8>, hmac: Vec<u8>) -> Result<Keys, KeyError> {
        if !(1..=Self::MAX_ENCRYPTION_BYTES).contains(&encryption.len()) {
            return Err(KeyError::EncryptionLength(encryption.len()));
        }
        if !(1..=Self::MAX_HMAC_BYTES).contains(&hmac.len()) {
            return Err(KeyError::HmacLength(hmac.len()));
        }
        if encryption == hmac {
            return Err(KeyError::Identical);
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(&hmac).map_err(|_| KeyError::HmacLength(hmac.len()))?;
        Ok(Keys { encryption, mac })
    }

    /// Keys from their base64, as `fwknop --key-gen` prints them and
    /// access.conf's `KEY_BASE64` and `HMAC_KEY_BASE64` hold them (with or
    /// without `=` padding).
    pub fn from_base64(encryption: &str, hmac: &str) -> Result<Keys, KeyError> {
        const ENGINE: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let decode = |text: &str, which| {
            ENGINE
                .decode(text.trim())
                .map_err(|_| KeyError::Base64(which))
        };
        Keys::new(decode(encryption, "encryption")?, decode(hmac, "HMAC")?)
    }
}

/// The request in `payload`, a UDP payload as received, if it is an SPA
/// packet made with `keys`: the HMAC first (in constant time, before
/// anything is decoded), then decryption, then every field and the digest.
pub fn open(payload: &[u8], keys: &Keys) -> Result<Request, Refusal> {
    let packet = wire_text(payload)?;
    let body = cipher::authenticate(&keys.mac, packet)?;
    let plaintext = cipher::decrypt(&keys.encryption, body)?;
    message::parse(&plaintext)
}

/// `payload` as text, if it can be an SPA packet at all: its size and its
/// characters (base64's, without `=`), as fwknopd checks before trying keys.
fn wire_text(payload: &[u8]) -> Result<&str, Refusal> {
    if !(MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&payload.len()) {
        return Err(Refusal::malformed(format!(
            "{} bytes, not {MIN_PACKET_BYTES} to {MAX_PACKET_BYTES}",
            payload.len()
        )));
    }
    if !payload
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(Refusal::malformed("characters outside base64's"));
    }
    // fwknopd refuses these: a captured packet with the prefix put back
    // would pass its replay check as a new packet, and its HMAC too, as
    // libfko adds the prefix only where it is missing. (It would not pass
    // here, where the prefix is always added, but it is not SPA data.)
    if payload.starts_with(cipher::PREFIX.as_bytes()) {
        return Err(Refusal::malformed("a payload starting with U2FsdGVkX1"));
    }
    std::str::from_utf8(payload).map_err(|_| Refusal::malformed("characters outside base64's"))
}

/// A packet fwknopd accepts for `outgoing` under `keys`, ready to send as a
/// UDP payload: a fresh random value and salt from the system, a SHA-256
/// digest and an HMAC-SHA256, message type `Access`, or
/// `ClientTimeoutAccess` with a client timeout.
pub fn seal(outgoing: &Outgoing, keys: &Keys) -> Result<String, SealError> {
    let random = message::random_digits()?;
    let mut salt = [0; cipher::SALT_BYTES];
    getrandom::fill(&mut salt)?;
    seal_with(outgoing, keys, &random, &salt)
}

/// [`seal`] with the random value and salt given, for tests.
pub(crate) fn seal_with(
    outgoing: &Outgoing,
    keys: &Keys,
    random: &str,
    salt: &[u8; cipher::SALT_BYTES],
) -> Result<String, SealError> {
    let plaintext = message::build(outgoing, random)?;
    let mut packet = cipher::encrypt(&keys.encryption, salt, plaintext.as_bytes());
    let tag = cipher::tag(&keys.mac, &packet);
    packet.push_str(&tag);
    Ok(packet)
}

/// An authentic packet (the right HMAC) around any `plaintext`, as if a
/// client holding `keys` had sent it: what the fuzz targets feed the
/// decoder past its HMAC and decryption.
#[cfg(feature = "testing")]
pub fn forge(keys: &Keys, plaintext: &[u8]) -> Vec<u8> {
    let body = cipher::encrypt(&keys.encryption, &[7; cipher::SALT_BYTES], plaintext);
    let tag = cipher::tag(&keys.mac, &body);
    format!("{body}{tag}").into_bytes()
}

/// The key of `payload` in a replay cache: the SHA-256 of the payload as
/// received, as fwknopd keys its cache (it stores the base64 of the same
/// hash).
pub fn replay_key(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Seconds since the Unix epoch (negative before it, as a clock can be).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
