import Foundation
import Security

/// The store's 32-byte key, random on first use, kept in the Keychain for
/// this device only (never in backups, never synced to iCloud).
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

    /// After a remote wipe: a new store gets a new key.
    static func forget() {
        SecItemDelete(query as CFDictionary)
    }
}
