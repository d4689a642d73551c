//! The cryptography of fwknop's Rijndael packets, as lib/cipher_funcs.c and
//! lib/fko_hmac.c do it, all from RustCrypto crates: OpenSSL's `enc` format
//! (`Salted__`, the salt, AES-256-CBC with PKCS#7 padding, key and IV from
//! `EVP_BytesToKey` with MD5 and one round) and the HMAC-SHA256 tag over the
//! ciphertext's base64.

use aes::Aes256;
use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use cbc::cipher::{
    BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _, block_padding::Pkcs7,
};
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::errors::Refusal;

/// What OpenSSL's `enc` format starts with, before the salt.
const MAGIC: &[u8; 8] = b"Salted__";
/// The base64 of `MAGIC`'s first 60 bits: the same in every packet, so the
/// client drops it from the wire, and the server puts it back before the
/// HMAC and decryption.
pub(super) const PREFIX: &str = "U2FsdGVkX1";
/// Bytes of salt after `MAGIC`.
pub(super) const SALT_BYTES: usize = 8;
/// Characters of the base64 HMAC-SHA256 tag that ends a packet (32 bytes,
/// no padding).
pub(super) const TAG_CHARS: usize = 43;

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;

/// The AES-256 key and CBC IV that OpenSSL's `EVP_BytesToKey` derives with
/// MD5 and one round: `D1 = MD5(key || salt)`, `Di = MD5(Di-1 || key ||
/// salt)`, and `D1 || D2 || D3` is the key then the IV. fwknop uses the key
/// bytes as they are (lib/cipher_funcs.c, `rij_salt_and_iv`).
fn derive(key: &[u8], salt: &[u8; SALT_BYTES]) -> ([u8; 32], [u8; 16]) {
    let round = |previous: &[u8]| -> [u8; 16] {
        Md5::new()
            .chain_update(previous)
            .chain_update(key)
            .chain_update(salt)
            .finalize()
            .into()
    };
    let d1 = round(&[]);
    let d2 = round(&d1);
    let iv = round(&d2);
    let mut aes_key = [0; 32];
    aes_key[..16].copy_from_slice(&d1);
    aes_key[16..].copy_from_slice(&d2);
    (aes_key, iv)
}

/// The packet's ciphertext as it goes on the wire: the base64 (no padding)
/// of `MAGIC`, `salt` and the encrypted `plaintext`, without `PREFIX`.
pub(super) fn encrypt(key: &[u8], salt: &[u8; SALT_BYTES], plaintext: &[u8]) -> String {
    let (aes_key, iv) = derive(key, salt);
    let ciphertext =
        Aes256CbcEnc::new(&aes_key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(plaintext);
    let mut raw = Vec::with_capacity(MAGIC.len() + SALT_BYTES + ciphertext.len());
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(salt);
    raw.extend_from_slice(&ciphertext);
    let encoded = STANDARD_NO_PAD.encode(raw);
    // Always there: the base64 of anything starting with MAGIC starts with
    // PREFIX (a test checks it).
    encoded.strip_prefix(PREFIX).unwrap_or(&encoded).to_owned()
}

/// The plaintext in `body`, a packet's ciphertext as on the wire (its
/// base64 without `PREFIX`, the tag already cut off). Only for an
/// authenticated body: a wrong key shows only as bad padding or garbage.
pub(super) fn decrypt(key: &[u8], body: &str) -> Result<Vec<u8>, Refusal> {
    let raw = STANDARD_NO_PAD
        .decode([PREFIX, body].concat())
        .map_err(|_| Refusal::malformed("a ciphertext that is not canonical base64"))?;
    // libfko takes the salt without looking at the magic; a packet made by
    // fwknop always has it.
    let rest = raw
        .strip_prefix(MAGIC)
        .ok_or_else(|| Refusal::malformed("a ciphertext without Salted__"))?;
    let (salt, ciphertext) = rest
        .split_first_chunk::<SALT_BYTES>()
        .ok_or_else(|| Refusal::malformed("a ciphertext without salt"))?;
    let (aes_key, iv) = derive(key, salt);
    Aes256CbcDec::new(&aes_key.into(), &iv.into())
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map_err(|_| Refusal::malformed("bad padding (wrong encryption key?)"))
}

/// The base64 (no padding) HMAC-SHA256 tag of a packet whose wire
/// ciphertext is `body`: computed over `PREFIX` and `body`, the base64
/// ciphertext as the client had it before dropping `PREFIX`.
pub(super) fn tag(mac: &Hmac<Sha256>, body: &str) -> String {
    let mut mac = mac.clone();
    mac.update(PREFIX.as_bytes());
    mac.update(body.as_bytes());
    STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The ciphertext of `packet` (ASCII) if its tag is right. The tags are
/// compared as fwknopd compares them, as base64 text in constant time, so
/// that a tag written otherwise (unused low bits set in its last character)
/// does not pass.
pub(super) fn authenticate<'a>(mac: &Hmac<Sha256>, packet: &'a str) -> Result<&'a str, Refusal> {
    let (body, received) = packet
        .split_at_checked(packet.len().saturating_sub(TAG_CHARS))
        .ok_or(Refusal::BadHmac)?;
    let expected = tag(mac, body);
    if body.is_empty() || !bool::from(expected.as_bytes().ct_eq(received.as_bytes())) {
        return Err(Refusal::BadHmac);
    }
    Ok(body)
}
