using System.Security.Cryptography;
using System.Text;

namespace OnnxQuant.Frontend;

/// <summary>SHA-256 digests as lowercase hex, the form used in reports, manifests and cache keys.</summary>
public static class Hashing
{
    public static string Sha256Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The digest of <paramref name="text"/>'s UTF-8 bytes.</summary>
    public static string Sha256Hex(string text) => Sha256Hex(Encoding.UTF8.GetBytes(text));
}
