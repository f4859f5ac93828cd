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
 * key that never leaves the Android Keystore. A wiped or lost phone reads
 * nothing: without the Keystore entry the wrapped key is noise.
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

    /** After a remote wipe: a new store gets a new key. */
    fun forget() {
        prefs.edit().clear().commit()
        KeyStore.getInstance("AndroidKeyStore").apply { load(null) }.deleteEntry(alias)
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
