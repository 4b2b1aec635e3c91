using System.Security.Cryptography;

namespace OnnxQuant.Passes.Pipeline;

/// <summary>The hash every document of the compiler records: SHA-256 as lower-case hex.</summary>
public static class ContentHash
{
    public static string Sha256Hex(byte[] bytes) => Convert.ToHexString(SHA256.HashData(bytes)).ToLowerInvariant();
}
