//! Fixed vocabularies of the generated world: channels, event types, categories, member
//! levels, cities, stores, WeChat apps, email domains and name syllables, with the weights
//! the generator draws them by. Owns no randomness; `population` and `activity` draw from it.

/// A channel an event arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Channel {
    Pos,
    Miniprogram,
    OfficialAccount,
    Tmall,
    Jd,
    Douyin,
    Xiaohongshu,
    Ad,
    Crm,
    Service,
}

impl Channel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Channel::Pos => "pos",
            Channel::Miniprogram => "miniprogram",
            Channel::OfficialAccount => "official_account",
            Channel::Tmall => "tmall",
            Channel::Jd => "jd",
            Channel::Douyin => "douyin",
            Channel::Xiaohongshu => "xiaohongshu",
            Channel::Ad => "ad",
            Channel::Crm => "crm",
            Channel::Service => "service",
        }
    }

    /// Marketplace channels: the shopper is known by phone or device.
    pub(crate) fn is_marketplace(self) -> bool {
        matches!(
            self,
            Channel::Tmall | Channel::Jd | Channel::Douyin | Channel::Xiaohongshu
        )
    }
}

/// Channels a person can register on, with weights (miniprogram ~30%). Ads do not register.
pub(crate) const REGISTER_CHANNELS: [(Channel, u32); 9] = [
    (Channel::Miniprogram, 30),
    (Channel::Pos, 18),
    (Channel::Tmall, 12),
    (Channel::Jd, 8),
    (Channel::Douyin, 9),
    (Channel::Xiaohongshu, 6),
    (Channel::OfficialAccount, 7),
    (Channel::Crm, 6),
    (Channel::Service, 4),
];

/// Marketplaces with their overall popularity.
pub(crate) const MARKETPLACES: [(Channel, u32); 4] = [
    (Channel::Tmall, 40),
    (Channel::Jd, 25),
    (Channel::Douyin, 20),
    (Channel::Xiaohongshu, 15),
];

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    PageView,
    AddToCart,
    Purchase,
    Register,
    CouponClaim,
    StoreVisit,
    AdClick,
    Lead,
    ProfileUpdate,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::AddToCart => "add_to_cart",
            EventType::Purchase => "purchase",
            EventType::Register => "register",
            EventType::CouponClaim => "coupon_claim",
            EventType::StoreVisit => "store_visit",
            EventType::AdClick => "ad_click",
            EventType::Lead => "lead",
            EventType::ProfileUpdate => "profile_update",
        }
    }
}

/// Product categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Category {
    Skincare,
    Makeup,
    Fragrance,
    Apparel,
    Shoes,
    Snacks,
    Home,
    Electronics,
}

impl Category {
    pub(crate) const ALL: [Category; 8] = [
        Category::Skincare,
        Category::Makeup,
        Category::Fragrance,
        Category::Apparel,
        Category::Shoes,
        Category::Snacks,
        Category::Home,
        Category::Electronics,
    ];

    /// How often a category is some shopper's favourite, and the base rate of browsing it.
    pub(crate) const WEIGHTS: [u32; 8] = [30, 14, 8, 16, 9, 10, 8, 5];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Category::Skincare => "skincare",
            Category::Makeup => "makeup",
            Category::Fragrance => "fragrance",
            Category::Apparel => "apparel",
            Category::Shoes => "shoes",
            Category::Snacks => "snacks",
            Category::Home => "home",
            Category::Electronics => "electronics",
        }
    }

    /// Median price in cents (CNY) of an item in this category.
    pub(crate) fn median_price_cents(self) -> f64 {
        match self {
            Category::Skincare => 30_000.0,
            Category::Makeup => 20_000.0,
            Category::Fragrance => 50_000.0,
            Category::Apparel => 25_000.0,
            Category::Shoes => 40_000.0,
            Category::Snacks => 4_000.0,
            Category::Home => 15_000.0,
            Category::Electronics => 90_000.0,
        }
    }

    pub(crate) fn index(self) -> u32 {
        self as u32
    }
}

/// Items per category; SKU numbers are `(category + 1) * 100_000 + item`.
pub(crate) const ITEMS_PER_CATEGORY: u32 = 2_000;

/// Membership level, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Normal,
    Silver,
    Gold,
    Vip,
}

impl Level {
    pub(crate) const ALL: [Level; 4] = [Level::Normal, Level::Silver, Level::Gold, Level::Vip];
    /// normal 60% / silver 25% / gold 10% / vip 5%.
    pub(crate) const WEIGHTS: [u32; 4] = [60, 25, 10, 5];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Silver => "silver",
            Level::Gold => "gold",
            Level::Vip => "vip",
        }
    }
}

/// Cities (pinyin, no apostrophes so they quote cleanly in rules) with population weights.
pub(crate) const CITIES: [(&str, u32); 20] = [
    ("Shanghai", 12),
    ("Beijing", 11),
    ("Guangzhou", 8),
    ("Shenzhen", 8),
    ("Hangzhou", 6),
    ("Chengdu", 6),
    ("Wuhan", 5),
    ("Nanjing", 5),
    ("Xian", 4),
    ("Chongqing", 5),
    ("Suzhou", 4),
    ("Tianjin", 4),
    ("Changsha", 3),
    ("Zhengzhou", 3),
    ("Qingdao", 3),
    ("Xiamen", 2),
    ("Kunming", 2),
    ("Shenyang", 3),
    ("Dalian", 2),
    ("Hefei", 3),
];

/// Stores are `S001..=S200`; store `s` is in city `(s - 1) % 20`, ten per city.
pub(crate) const STORES: u16 = 200;

/// Mini-program app id (openids are written `<appid>:<openid>`).
pub(crate) const MINI_APP: &str = "wx1a2b3c4d5e6f7001";
/// Official-account app id.
pub(crate) const OA_APP: &str = "wx1a2b3c4d5e6f7002";

/// Email domains for name-style addresses, with weights. QQ-number addresses are `@qq.com`.
pub(crate) const EMAIL_DOMAINS: [(&str, u32); 8] = [
    ("163.com", 25),
    ("qq.com", 15),
    ("126.com", 12),
    ("gmail.com", 10),
    ("outlook.com", 10),
    ("example.cn", 8),
    ("sina.com", 8),
    ("foxmail.com", 7),
];

/// Given-name syllables (pinyin) for generated email addresses.
pub(crate) const GIVEN: [&str; 30] = [
    "wei", "fang", "na", "min", "jing", "li", "qiang", "lei", "jun", "yang", "yong", "yan", "jie",
    "tao", "ming", "chao", "xiu", "xia", "ping", "hui", "hao", "yu", "xin", "yi", "ting", "kai",
    "bo", "lan", "mei", "rui",
];

/// Family-name syllables (pinyin) for generated email addresses.
pub(crate) const FAMILY: [&str; 30] = [
    "wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma",
    "zhu", "hu", "guo", "he", "lin", "gao", "luo", "zheng", "liang", "xie", "song", "tang", "han",
    "feng", "deng", "cao", "peng",
];

/// Mobile prefixes. 139 is last so the reserved store range `1390000xxxx` sits at the top of
/// the phone index space, which person phones never reach (see `ids`).
pub(crate) const PHONE_PREFIXES: [u16; 28] = [
    130, 131, 132, 133, 134, 135, 136, 137, 138, 150, 151, 152, 153, 155, 156, 157, 158, 159, 180,
    181, 182, 183, 184, 185, 186, 187, 188, 139,
];

/// Relative activity by local hour of day (peaks at lunch and 20:00-22:00).
pub(crate) const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 8, 9, 11, 9, 8, 8, 8, 9, 10, 12, 14, 15, 12, 6,
];

/// The seed tags written to `tags.toml`.
pub const TAGS_TOML: &str = r#"# Seed tags for data generated by `quiver gen`. Rules use the segment language.
[[tag]]
name = "miniprogram_user"
kind = "boolean"
description = "registered on the mini-program"
rule = "registered_channel = 'miniprogram'"

[[tag]]
name = "skincare_lover"
kind = "boolean"
description = "viewed skincare more than 3 times"
rule = "did(page_view WHERE category = 'skincare') > 3"

[[tag]]
name = "highly_active"
kind = "boolean"
description = "at least 2 purchases within 7 days"
rule = "did(purchase) >= 2 IN LAST 7 DAYS"

[[tag]]
name = "member_level"
kind = "enum"
description = "membership level from profile updates"
source = "member_level"
values = ["normal", "silver", "gold", "vip"]
"#;
