//! Typed IMAP commands, as produced by [`crate::parser`] (RFC 3501 §6,
//! RFC 9051 §6 and the extensions listed in the crate docs).

/// One element of a sequence set (RFC 9051 §9 `seq-range`): `*` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First value; `None` = `*`.
    pub first: Option<u32>,
    /// Last value; `None` = `*`.
    pub last: Option<u32>,
}

/// A parsed `sequence-set` (still unresolved: numbers may be sequence
/// numbers or UIDs, `*` depends on the mailbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<SeqRange>);

impl SeqSet {
    /// The range standing for `$` (RFC 5182 §2.1): 0 is no valid
    /// `nz-number`, so the parser never produces it for anything else.
    const SAVED: SeqRange = SeqRange {
        first: Some(0),
        last: Some(0),
    };

    /// `$`: the last saved search result (RFC 5182).
    #[must_use]
    pub fn saved() -> Self {
        Self(vec![Self::SAVED])
    }

    /// Whether this is `$`.
    #[must_use]
    pub fn is_saved(&self) -> bool {
        self.0 == [Self::SAVED]
    }
}

/// The QRESYNC parameter of SELECT / EXAMINE (RFC 7162 §3.2.5): what the
/// client remembers of the mailbox. Sets are bounded by the parser
/// (threat model T122).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QresyncParams {
    pub uidvalidity: u32,
    pub modseq: u64,
    /// UIDs the client knows; `None` = all.
    pub known_uids: Option<SeqSet>,
    /// `(known-sequence-set known-uid-set)`: parsed and checked, not
    /// needed (the store keeps every expunge with its MODSEQ).
    pub seq_match: Option<(SeqSet, SeqSet)>,
}

/// A command with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub kind: CommandKind,
}

/// `STORE` operation (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Add,
    Remove,
    Replace,
}

/// `STATUS` data items (RFC 9051 §6.3.11, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModseq,
    /// RFC 9208 §4.2.2.
    DeletedStorage,
    /// RFC 8474 §4.2.
    MailboxId,
}

/// `LIST` selection options (RFC 5258 §3.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSelect {
    pub subscribed: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// `LIST` return options (RFC 5258 §3.2, RFC 5819, RFC 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    pub status: Vec<StatusItem>,
}

/// ESEARCH return options (RFC 4731, RFC 9051 §6.4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// SEARCHRES (RFC 5182 §2.1): keep the result for `$`.
    pub save: bool,
}

impl SearchReturn {
    /// `RETURN ()` means `RETURN (ALL)` (RFC 4731 §3.1); `RETURN (SAVE)`
    /// alone answers nothing (RFC 5182 §2.1).
    #[must_use]
    pub fn normalised(mut self) -> Self {
        if !(self.min || self.max || self.all || self.count || self.save) {
            self.all = true;
        }
        self
    }
}

/// One SORT criterion (RFC 5256 §3, DISPLAYFROM/DISPLAYTO of RFC 5957).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

/// A SORT criterion with its REVERSE prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortCriterion {
    pub reverse: bool,
    pub key: SortKey,
}

/// THREAD algorithms (RFC 5256 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    OrderedSubject,
    References,
}

/// A search key (RFC 9051 §6.4.4), before sequence numbers are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    And(Vec<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    Not(Box<SearchKey>),
    SeqSet(SeqSet),
    Uid(SeqSet),
    /// System flag or keyword that must be set.
    Flag(String),
    /// System flag or keyword that must not be set.
    NoFlag(String),
    Recent,
    New,
    Old,
    /// Internal date: `[since, before)` in days since 1970-01-01.
    Date {
        since: Option<i64>,
        before: Option<i64>,
    },
    /// `Date:` header, same convention.
    SentDate {
        since: Option<i64>,
        before: Option<i64>,
    },
    Larger(u64),
    Smaller(u64),
    Header(String, String),
    Body(String),
    Text(String),
    ModSeq(u64),
}

/// `BODY[...]` section text (RFC 9051 §6.4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// No text: the whole part (or message).
    None,
    Header,
    HeaderFields {
        not: bool,
        fields: Vec<String>,
    },
    Text,
    Mime,
}

/// A `section` with its part path and optional partial range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: SectionText,
}

/// `FETCH` data items (RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAtt {
    Uid,
    Flags,
    InternalDate,
    Rfc822Size,
    Envelope,
    Body,
    BodyStructure,
    ModSeq,
    /// `RFC822` = `BODY[]`, answered under its own name.
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    BodySection {
        peek: bool,
        section: Section,
        partial: Option<(u32, u32)>,
    },
    Binary {
        peek: bool,
        part: Vec<u32>,
        partial: Option<(u32, u32)>,
    },
    BinarySize {
        part: Vec<u32>,
    },
    /// RFC 8474 §5.1 EMAILID.
    EmailId,
    /// RFC 8474 §5.2 THREADID.
    ThreadId,
    /// RFC 8970 §3 PREVIEW, `lazy` = the LAZY modifier.
    Preview {
        lazy: bool,
    },
}

/// One message of `APPEND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage {
    pub flags: Vec<String>,
    /// Seconds since the epoch.
    pub date: Option<i64>,
    pub data: Vec<u8>,
}

/// The commands this server understands.
/// Which mailboxes a NOTIFY event group covers (RFC 5465 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyFilter {
    Selected,
    SelectedDelayed,
    Inboxes,
    Personal,
    Subscribed,
    /// Raw (wire) mailbox names and all their children.
    Subtree(Vec<Vec<u8>>),
    /// Raw (wire) mailbox names.
    Mailboxes(Vec<Vec<u8>>),
}

/// A NOTIFY event (RFC 5465 §5); names we do not implement are kept so
/// the handler can answer `NO [BADEVENT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEvent {
    /// With the FETCH items to send for each new message (SELECTED only).
    MessageNew(Vec<FetchAtt>),
    MessageExpunge,
    FlagChange,
    Other(String),
}

/// One `(filter events)` group; no events = `NONE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyGroup {
    pub filter: NotifyFilter,
    pub events: Vec<NotifyEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    Capability,
    Noop,
    Logout,
    StartTls,
    Id,
    Enable(Vec<String>),
    Login {
        user: Vec<u8>,
        pass: Vec<u8>,
    },
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    Select {
        mailbox: Vec<u8>,
        condstore: bool,
        read_only: bool,
        /// RFC 7162 §3.2.5 QRESYNC parameter.
        qresync: Option<QresyncParams>,
    },
    Create(Vec<u8>),
    Delete(Vec<u8>),
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
    List {
        reference: Vec<u8>,
        patterns: Vec<Vec<u8>>,
        select: ListSelect,
        ret: ListReturn,
        extended: bool,
    },
    Lsub {
        reference: Vec<u8>,
        pattern: Vec<u8>,
    },
    Namespace,
    /// COMPRESS (RFC 4978) with its mechanism name.
    Compress(String),
    Status {
        mailbox: Vec<u8>,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: Vec<u8>,
        /// One message, or several with MULTIAPPEND (RFC 3502).
        messages: Vec<AppendMessage>,
    },
    Idle,
    Check,
    Close,
    Unselect,
    Expunge {
        uids: Option<SeqSet>,
    },
    Search {
        uid: bool,
        ret: Option<SearchReturn>,
        key: SearchKey,
    },
    /// SORT / UID SORT (RFC 5256 §3), ESORT's RETURN (RFC 5267 §3).
    Sort {
        uid: bool,
        ret: Option<SearchReturn>,
        criteria: Vec<SortCriterion>,
        key: SearchKey,
    },
    /// THREAD / UID THREAD (RFC 5256 §3).
    Thread {
        uid: bool,
        algorithm: ThreadAlgorithm,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SeqSet,
        atts: Vec<FetchAtt>,
        changed_since: Option<u64>,
        /// RFC 7162 §3.2.6 VANISHED modifier (UID FETCH with CHANGEDSINCE).
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SeqSet,
        op: StoreOp,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    },
    Copy {
        uid: bool,
        set: SeqSet,
        mailbox: Vec<u8>,
        is_move: bool,
    },
    /// RFC 9208 §4.1.1.
    GetQuota(Vec<u8>),
    /// RFC 9208 §4.1.2.
    GetQuotaRoot(Vec<u8>),
    /// RFC 9208 §4.1.3: resource names (upper case) and limits.
    SetQuota {
        root: Vec<u8>,
        limits: Vec<(String, u64)>,
    },
    /// RFC 5464 §4.2: lower-case entry names; depth 0, 1 or
    /// [`crate::parser::DEPTH_INFINITY`].
    GetMetadata {
        mailbox: Vec<u8>,
        maxsize: Option<u64>,
        depth: u32,
        entries: Vec<String>,
    },
    /// RFC 5464 §4.3: `None` deletes the entry.
    SetMetadata {
        mailbox: Vec<u8>,
        values: Vec<(String, Option<Vec<u8>>)>,
    },
    /// RFC 5465 §3: `None` is NOTIFY NONE; `status` the STATUS indicator.
    Notify(Option<(bool, Vec<NotifyGroup>)>),
}

impl CommandKind {
    /// Command name for logs and metrics.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Capability => "CAPABILITY",
            Self::Noop => "NOOP",
            Self::Logout => "LOGOUT",
            Self::StartTls => "STARTTLS",
            Self::Id => "ID",
            Self::Enable(_) => "ENABLE",
            Self::Login { .. } => "LOGIN",
            Self::Authenticate { .. } => "AUTHENTICATE",
            Self::Select {
                read_only: false, ..
            } => "SELECT",
            Self::Select {
                read_only: true, ..
            } => "EXAMINE",
            Self::Create(_) => "CREATE",
            Self::Delete(_) => "DELETE",
            Self::Rename { .. } => "RENAME",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::List { .. } => "LIST",
            Self::Lsub { .. } => "LSUB",
            Self::Namespace => "NAMESPACE",
            Self::Compress(_) => "COMPRESS",
            Self::Status { .. } => "STATUS",
            Self::Append { .. } => "APPEND",
            Self::Idle => "IDLE",
            Self::Check => "CHECK",
            Self::Close => "CLOSE",
            Self::Unselect => "UNSELECT",
            Self::Expunge { .. } => "EXPUNGE",
            Self::Search { .. } => "SEARCH",
            Self::Sort { .. } => "SORT",
            Self::Thread { .. } => "THREAD",
            Self::Fetch { .. } => "FETCH",
            Self::Store { .. } => "STORE",
            Self::Copy { is_move: false, .. } => "COPY",
            Self::Copy { is_move: true, .. } => "MOVE",
            Self::GetQuota(_) => "GETQUOTA",
            Self::GetQuotaRoot(_) => "GETQUOTAROOT",
            Self::SetQuota { .. } => "SETQUOTA",
            Self::GetMetadata { .. } => "GETMETADATA",
            Self::SetMetadata { .. } => "SETMETADATA",
            Self::Notify(_) => "NOTIFY",
        }
    }
}
