//! Why a packet was refused, or could not be made.

/// Why [`open`](super::open) refused a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The tag is not the HMAC of the ciphertext under the HMAC key: not a
    /// packet for these keys, or altered on the way.
    #[error("the HMAC does not match")]
    BadHmac,
    /// Not an SPA packet, or an authentic one whose content fwknop would
    /// not accept (or that the encryption key does not decrypt); the text
    /// names the first fault found, never the payload's content.
    #[error("not a valid SPA packet: {0}")]
    Malformed(String),
}

impl Refusal {
    /// A short, fixed name for metrics and logs: `bad_hmac` or `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadHmac => "bad_hmac",
            Refusal::Malformed(_) => "malformed",
        }
    }

    pub(super) fn malformed(why: impl Into<String>) -> Refusal {
        Refusal::Malformed(why.into())
    }
}

/// Why [`seal`](super::seal) made no packet.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The system gave no random bytes for the salt and random value.
    #[error("no random bytes: {0}")]
    Random(#[from] getrandom::Error),
    /// A field fwknopd would refuse, or that the format cannot carry.
    #[error("cannot make an SPA packet with {0}")]
    Invalid(String),
}
