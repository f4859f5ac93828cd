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
        // The Kotlin half of rustls-platform-verifier (see app/build.gradle.kts).
        // Since its 0.7.1 the rustls project serves these AARs as a Maven
        // repository from the `maven-archive` branch of its GitHub repository;
        // override the address with -PrustlsVerifierMaven=<url> (a mirror, or a
        // local copy of that branch). Only the `rustls` group comes from it.
        exclusiveContent {
            forRepository {
                maven {
                    name = "rustlsPlatformVerifier"
                    url = uri(
                        providers.gradleProperty("rustlsVerifierMaven").getOrElse(
                            "https://raw.githubusercontent.com/rustls/rustls-platform-verifier/maven-archive/maven",
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
