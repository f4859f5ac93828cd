// Handoff for Android: `sdk` is a plain Kotlin/JVM library (generated
// bindings + the small coroutine layer, tested on the host JVM), `app` is the
// Compose UI. See README.md for the build (cargo-ndk, then Gradle).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
        // The Kotlin half of rustls-platform-verifier (see app/build.gradle.kts),
        // from the Maven repository its README (0.7.1) names: the
        // `maven-archive` branch of its GitHub repository. Override the
        // address with -PrustlsVerifierMaven=<url> (a mirror, or a local copy
        // of that branch). Only the `rustls` group comes from it.
        exclusiveContent {
            forRepository {
                maven {
                    name = "rustlsPlatformVerifier"
                    url = uri(
                        providers.gradleProperty("rustlsVerifierMaven").getOrElse(
                            "https://github.com/rustls/rustls-platform-verifier/raw/maven-archive/android-release-support/maven/",
                        ),
                    )
                    metadataSources {
                        mavenPom()
                        artifact()
                    }
                }
            }
            filter { includeGroup("rustls") }
        }
    }
}
rootProject.name = "handoff"
include(":sdk", ":app")
