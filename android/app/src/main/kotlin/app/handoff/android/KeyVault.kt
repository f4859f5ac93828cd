package app.handoff.android

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import android.util.Base64
import java.security.KeyStore
import java.security.SecureRandom
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * The store's 32-byte key. Random on first use, kept only wrapped by an AES
 * key that never leaves the Android Keystore: the file alone, copied off
 * the phone, reads as noise. A revoked phone keeps its key: the core wiped
 * the store's contents (deleted and overwritten), and the same store,
 * under the same key, takes the next enrolment. (Dropping the key while
 * the file stays would leave a store no key opens: the next launch would
 * fail, and whatever was written after the wipe would be lost.)
 */
class KeyVault(context: Context) {
    private val prefs = context.getSharedPreferences("handoff.key", Context.MODE_PRIVATE)
    private val alias = "handoff.store.wrap"

    fun storeKey(): ByteArray {
        val wrapped = prefs.getString("wrapped", null)
        if (wrapped != null) return unwrap(Base64.decode(wrapped, Base64.NO_WRAP))
        val key = ByteArray(32).also { SecureRandom().nextBytes(it) }
        prefs.edit().putString("wrapped", Base64.encodeToString(wrap(key), Base64.NO_WRAP)).commit()
        return key
    }

    private fun wrappingKey(): SecretKey {
        val ks = KeyStore.getInstance("AndroidKeyStore").apply { load(null) }
        (ks.getKey(alias, null) as? SecretKey)?.let { return it }
        val spec = KeyGenParameterSpec.Builder(alias, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
            .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
            .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
            .setKeySize(256)
            .build()
        return KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, "AndroidKeyStore")
            .apply { init(spec) }
            .generateKey()
    }

    private fun wrap(key: ByteArray): ByteArray {
        val cipher = Cipher.getInstance("AES/GCM/NoPadding").apply { init(Cipher.ENCRYPT_MODE, wrappingKey()) }
        return cipher.iv + cipher.doFinal(key)
    }

    private fun unwrap(blob: ByteArray): ByteArray {
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.DECRYPT_MODE, wrappingKey(), GCMParameterSpec(128, blob, 0, 12))
        return cipher.doFinal(blob, 12, blob.size - 12)
    }
}
