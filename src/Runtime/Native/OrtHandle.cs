using System.Runtime.InteropServices;

namespace OnnxQuant.Runtime.Native;

/// <summary>
/// Owns one native ONNX Runtime object (session, session options, value, ...) and releases it with the matching
/// Release function exactly once, also when the owner forgets to dispose it.
/// </summary>
internal sealed unsafe class OrtHandle : SafeHandle
{
    private readonly delegate* unmanaged<nint, void> _release;

    public OrtHandle(nint handle, delegate* unmanaged<nint, void> release)
        : base(0, ownsHandle: true)
    {
        _release = release;
        SetHandle(handle);
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        _release(handle);
        return true;
    }
}
