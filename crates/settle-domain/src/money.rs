//! Currencies (ISO 4217) and amounts in integer minor units.
//!
//! Money never touches floating point: an amount is an `i64` count of the currency's minor unit
//! (`1050` USD is 10.50; `1050` JPY is ¥1,050; `1050` BHD is 1.050).

use std::fmt;

/// One row of the ISO 4217 table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CurrencyInfo {
    pub code: &'static str,
    pub name: &'static str,
    pub symbol: &'static str,
    /// Number of digits after the decimal point of the minor unit.
    pub exponent: u8,
}

const fn c(code: &'static str, exponent: u8, symbol: &'static str, name: &'static str) -> CurrencyInfo {
    CurrencyInfo {
        code,
        name,
        symbol,
        exponent,
    }
}

/// Active ISO 4217 currencies (funds and precious-metal codes excluded), sorted by code.
pub const CURRENCIES: &[CurrencyInfo] = &[
    c("AED", 2, "د.إ", "UAE Dirham"),
    c("AFN", 2, "؋", "Afghani"),
    c("ALL", 2, "L", "Lek"),
    c("AMD", 2, "֏", "Armenian Dram"),
    c("ANG", 2, "ƒ", "Netherlands Antillean Guilder"),
    c("AOA", 2, "Kz", "Kwanza"),
    c("ARS", 2, "$", "Argentine Peso"),
    c("AUD", 2, "A$", "Australian Dollar"),
    c("AWG", 2, "ƒ", "Aruban Florin"),
    c("AZN", 2, "₼", "Azerbaijan Manat"),
    c("BAM", 2, "KM", "Convertible Mark"),
    c("BBD", 2, "$", "Barbados Dollar"),
    c("BDT", 2, "৳", "Taka"),
    c("BGN", 2, "лв", "Bulgarian Lev"),
    c("BHD", 3, ".د.ب", "Bahraini Dinar"),
    c("BIF", 0, "FBu", "Burundi Franc"),
    c("BMD", 2, "$", "Bermudian Dollar"),
    c("BND", 2, "$", "Brunei Dollar"),
    c("BOB", 2, "Bs.", "Boliviano"),
    c("BRL", 2, "R$", "Brazilian Real"),
    c("BSD", 2, "$", "Bahamian Dollar"),
    c("BTN", 2, "Nu.", "Ngultrum"),
    c("BWP", 2, "P", "Pula"),
    c("BYN", 2, "Br", "Belarusian Ruble"),
    c("BZD", 2, "$", "Belize Dollar"),
    c("CAD", 2, "CA$", "Canadian Dollar"),
    c("CDF", 2, "FC", "Congolese Franc"),
    c("CHF", 2, "CHF", "Swiss Franc"),
    c("CLP", 0, "$", "Chilean Peso"),
    c("CNY", 2, "¥", "Yuan Renminbi"),
    c("COP", 2, "$", "Colombian Peso"),
    c("CRC", 2, "₡", "Costa Rican Colon"),
    c("CUP", 2, "$", "Cuban Peso"),
    c("CVE", 2, "$", "Cabo Verde Escudo"),
    c("CZK", 2, "Kč", "Czech Koruna"),
    c("DJF", 0, "Fdj", "Djibouti Franc"),
    c("DKK", 2, "kr", "Danish Krone"),
    c("DOP", 2, "RD$", "Dominican Peso"),
    c("DZD", 2, "د.ج", "Algerian Dinar"),
    c("EGP", 2, "E£", "Egyptian Pound"),
    c("ERN", 2, "Nfk", "Nakfa"),
    c("ETB", 2, "Br", "Ethiopian Birr"),
    c("EUR", 2, "€", "Euro"),
    c("FJD", 2, "$", "Fiji Dollar"),
    c("FKP", 2, "£", "Falkland Islands Pound"),
    c("GBP", 2, "£", "Pound Sterling"),
    c("GEL", 2, "₾", "Lari"),
    c("GHS", 2, "₵", "Ghana Cedi"),
    c("GIP", 2, "£", "Gibraltar Pound"),
    c("GMD", 2, "D", "Dalasi"),
    c("GNF", 0, "FG", "Guinean Franc"),
    c("GTQ", 2, "Q", "Quetzal"),
    c("GYD", 2, "$", "Guyana Dollar"),
    c("HKD", 2, "HK$", "Hong Kong Dollar"),
    c("HNL", 2, "L", "Lempira"),
    c("HTG", 2, "G", "Gourde"),
    c("HUF", 2, "Ft", "Forint"),
    c("IDR", 2, "Rp", "Rupiah"),
    c("ILS", 2, "₪", "New Israeli Sheqel"),
    c("INR", 2, "₹", "Indian Rupee"),
    c("IQD", 3, "ع.د", "Iraqi Dinar"),
    c("IRR", 2, "﷼", "Iranian Rial"),
    c("ISK", 0, "kr", "Iceland Krona"),
    c("JMD", 2, "J$", "Jamaican Dollar"),
    c("JOD", 3, "د.ا", "Jordanian Dinar"),
    c("JPY", 0, "¥", "Yen"),
    c("KES", 2, "KSh", "Kenyan Shilling"),
    c("KGS", 2, "сом", "Som"),
    c("KHR", 2, "៛", "Riel"),
    c("KMF", 0, "CF", "Comorian Franc"),
    c("KPW", 2, "₩", "North Korean Won"),
    c("KRW", 0, "₩", "Won"),
    c("KWD", 3, "د.ك", "Kuwaiti Dinar"),
    c("KYD", 2, "$", "Cayman Islands Dollar"),
    c("KZT", 2, "₸", "Tenge"),
    c("LAK", 2, "₭", "Lao Kip"),
    c("LBP", 2, "ل.ل", "Lebanese Pound"),
    c("LKR", 2, "Rs", "Sri Lanka Rupee"),
    c("LRD", 2, "$", "Liberian Dollar"),
    c("LSL", 2, "L", "Loti"),
    c("LYD", 3, "ل.د", "Libyan Dinar"),
    c("MAD", 2, "د.م.", "Moroccan Dirham"),
    c("MDL", 2, "L", "Moldovan Leu"),
    c("MGA", 2, "Ar", "Malagasy Ariary"),
    c("MKD", 2, "ден", "Denar"),
    c("MMK", 2, "K", "Kyat"),
    c("MNT", 2, "₮", "Tugrik"),
    c("MOP", 2, "MOP$", "Pataca"),
    c("MRU", 2, "UM", "Ouguiya"),
    c("MUR", 2, "₨", "Mauritius Rupee"),
    c("MVR", 2, "Rf", "Rufiyaa"),
    c("MWK", 2, "MK", "Malawi Kwacha"),
    c("MXN", 2, "MX$", "Mexican Peso"),
    c("MYR", 2, "RM", "Malaysian Ringgit"),
    c("MZN", 2, "MT", "Mozambique Metical"),
    c("NAD", 2, "$", "Namibia Dollar"),
    c("NGN", 2, "₦", "Naira"),
    c("NIO", 2, "C$", "Cordoba Oro"),
    c("NOK", 2, "kr", "Norwegian Krone"),
    c("NPR", 2, "₨", "Nepalese Rupee"),
    c("NZD", 2, "NZ$", "New Zealand Dollar"),
    c("OMR", 3, "ر.ع.", "Rial Omani"),
    c("PAB", 2, "B/.", "Balboa"),
    c("PEN", 2, "S/", "Sol"),
    c("PGK", 2, "K", "Kina"),
    c("PHP", 2, "₱", "Philippine Peso"),
    c("PKR", 2, "₨", "Pakistan Rupee"),
    c("PLN", 2, "zł", "Zloty"),
    c("PYG", 0, "₲", "Guarani"),
    c("QAR", 2, "ر.ق", "Qatari Rial"),
    c("RON", 2, "lei", "Romanian Leu"),
    c("RSD", 2, "дин.", "Serbian Dinar"),
    c("RUB", 2, "₽", "Russian Ruble"),
    c("RWF", 0, "FRw", "Rwanda Franc"),
    c("SAR", 2, "ر.س", "Saudi Riyal"),
    c("SBD", 2, "$", "Solomon Islands Dollar"),
    c("SCR", 2, "₨", "Seychelles Rupee"),
    c("SDG", 2, "ج.س.", "Sudanese Pound"),
    c("SEK", 2, "kr", "Swedish Krona"),
    c("SGD", 2, "S$", "Singapore Dollar"),
    c("SHP", 2, "£", "Saint Helena Pound"),
    c("SLE", 2, "Le", "Leone"),
    c("SOS", 2, "Sh", "Somali Shilling"),
    c("SRD", 2, "$", "Surinam Dollar"),
    c("SSP", 2, "£", "South Sudanese Pound"),
    c("STN", 2, "Db", "Dobra"),
    c("SVC", 2, "₡", "El Salvador Colon"),
    c("SYP", 2, "£", "Syrian Pound"),
    c("SZL", 2, "L", "Lilangeni"),
    c("THB", 2, "฿", "Baht"),
    c("TJS", 2, "SM", "Somoni"),
    c("TMT", 2, "m", "Turkmenistan New Manat"),
    c("TND", 3, "د.ت", "Tunisian Dinar"),
    c("TOP", 2, "T$", "Pa'anga"),
    c("TRY", 2, "₺", "Turkish Lira"),
    c("TTD", 2, "TT$", "Trinidad and Tobago Dollar"),
    c("TWD", 2, "NT$", "New Taiwan Dollar"),
    c("TZS", 2, "TSh", "Tanzanian Shilling"),
    c("UAH", 2, "₴", "Hryvnia"),
    c("UGX", 0, "USh", "Uganda Shilling"),
    c("USD", 2, "$", "US Dollar"),
    c("UYU", 2, "$U", "Peso Uruguayo"),
    c("UZS", 2, "soʻm", "Uzbekistan Sum"),
    c("VES", 2, "Bs.", "Bolívar Soberano"),
    c("VND", 0, "₫", "Dong"),
    c("VUV", 0, "VT", "Vatu"),
    c("WST", 2, "WS$", "Tala"),
    c("XAF", 0, "FCFA", "CFA Franc BEAC"),
    c("XCD", 2, "EC$", "East Caribbean Dollar"),
    c("XOF", 0, "CFA", "CFA Franc BCEAO"),
    c("XPF", 0, "₣", "CFP Franc"),
    c("YER", 2, "﷼", "Yemeni Rial"),
    c("ZAR", 2, "R", "Rand"),
    c("ZMW", 2, "ZK", "Zambian Kwacha"),
    c("ZWG", 2, "ZiG", "Zimbabwe Gold"),
];

/// A currency known to the ISO table. Only [`Currency::parse`] makes one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(&'static CurrencyInfo);

impl Currency {
    /// Accepts the three-letter code in upper or lower case (`usd` is USD, as Stripe writes it).
    pub fn parse(code: &str) -> Option<Currency> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let upper = code.to_ascii_uppercase();
        CURRENCIES
            .binary_search_by(|info| info.code.cmp(upper.as_str()))
            .ok()
            .map(|i| Currency(&CURRENCIES[i]))
    }

    pub fn code(self) -> &'static str {
        self.0.code
    }

    pub fn exponent(self) -> u8 {
        self.0.exponent
    }

    pub fn info(self) -> &'static CurrencyInfo {
        self.0
    }

    /// `major` whole units expressed in minor units (`USD.minor_units(100_000)` = 10,000,000).
    pub fn minor_units(self, major: i64) -> Option<i64> {
        10_i64
            .checked_pow(u32::from(self.0.exponent))
            .and_then(|f| major.checked_mul(f))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].code < pair[1].code, "{} !< {}", pair[0].code, pair[1].code);
        }
    }

    #[test]
    fn parses_known_codes_in_any_case_and_rejects_others() {
        assert_eq!(Currency::parse("usd").map(Currency::exponent), Some(2));
        assert_eq!(Currency::parse("JPY").map(Currency::exponent), Some(0));
        assert_eq!(Currency::parse("BHD").map(Currency::exponent), Some(3));
        for bad in ["", "US", "USDD", "XXX", "12A", "ÜSD"] {
            assert!(Currency::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn major_to_minor_uses_the_exponent() {
        let usd = Currency::parse("USD").expect("usd");
        let jpy = Currency::parse("JPY").expect("jpy");
        assert_eq!(usd.minor_units(100_000), Some(10_000_000));
        assert_eq!(jpy.minor_units(100_000), Some(100_000));
        assert_eq!(usd.minor_units(i64::MAX), None);
    }
}
