import Foundation
import Security

/// The store's 32-byte key, random on first use, kept in the Keychain for
/// this device only (never in backups, never synced to iCloud). A revoked
/// phone keeps it: the core wiped the store's contents, and the same store,
/// under the same key, takes the next enrolment (dropping the key while
/// the file stays would leave a store no key opens).
enum KeyVault {
    private static let query: [String: Any] = [
        kSecClass as String: kSecClassGenericPassword,
        kSecAttrService as String: "app.handoff.store",
        kSecAttrAccount as String: "store-key",
    ]

    static func storeKey() throws -> Data {
        var lookup = query
        lookup[kSecReturnData as String] = true
        var item: CFTypeRef?
        if SecItemCopyMatching(lookup as CFDictionary, &item) == errSecSuccess, let data = item as? Data {
            return data
        }
        var key = Data(count: 32)
        let ok = key.withUnsafeMutableBytes { SecRandomCopyBytes(kSecRandomDefault, 32, $0.baseAddress!) }
        guard ok == errSecSuccess else { throw NSError(domain: NSOSStatusErrorDomain, code: Int(ok)) }
        var add = query
        add[kSecValueData as String] = key
        add[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        let status = SecItemAdd(add as CFDictionary, nil)
        guard status == errSecSuccess else { throw NSError(domain: NSOSStatusErrorDomain, code: Int(status)) }
        return key
    }

}
