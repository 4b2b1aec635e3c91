using System.Text;

namespace OnnxQuant.Evaluation;

/// <summary>
/// A binary mask of <see cref="Height"/> x <see cref="Width"/> pixels, run-length encoded the way COCO does it:
/// pixels in column-major order (down each column, then the next column), runs alternating background / foreground,
/// starting with a (possibly empty) background run.
/// </summary>
public sealed class Rle
{
    private readonly uint[] _counts;

    public Rle(int height, int width, uint[] counts)
    {
        if (height < 0 || width < 0)
            throw new ArgumentOutOfRangeException(nameof(height), $"mask size {height}x{width} is negative");
        ArgumentNullException.ThrowIfNull(counts);
        long total = 0;
        foreach (var c in counts)
            total += c;
        if (total != (long)height * width)
            throw new ArgumentException(
                $"RLE counts cover {total} pixels but the mask has {height}x{width} = {(long)height * width}", nameof(counts));
        Height = height;
        Width = width;
        _counts = counts;
    }

    public int Height { get; }
    public int Width { get; }

    /// <summary>Run lengths, background first. Not copied: do not modify.</summary>
    public IReadOnlyList<uint> Counts => _counts;

    /// <summary>Number of foreground pixels.</summary>
    public long Area
    {
        get
        {
            long area = 0;
            for (var i = 1; i < _counts.Length; i += 2)
                area += _counts[i];
            return area;
        }
    }

    /// <summary>Encodes a row-major mask (<c>mask[y * width + x]</c> nonzero = foreground).</summary>
    public static Rle FromRowMajor(ReadOnlySpan<byte> mask, int height, int width)
    {
        if (mask.Length != (long)height * width)
            throw new ArgumentException($"mask has {mask.Length} pixels, expected {height}x{width}", nameof(mask));
        var counts = new List<uint>();
        var current = false;
        uint run = 0;
        for (var x = 0; x < width; x++)
        {
            for (var y = 0; y < height; y++)
            {
                var on = mask[y * width + x] != 0;
                if (on != current)
                {
                    counts.Add(run);
                    run = 0;
                    current = on;
                }
                run++;
            }
        }
        counts.Add(run);
        return new Rle(height, width, counts.ToArray());
    }

    /// <summary>Decodes to a row-major mask of 0/1 bytes.</summary>
    public byte[] ToRowMajor()
    {
        var mask = new byte[(long)Height * Width];
        long pos = 0;
        for (var i = 0; i < _counts.Length; i++)
        {
            if (i % 2 == 1)
                for (long p = pos; p < pos + _counts[i]; p++)
                    mask[(p % Height) * Width + p / Height] = 1;
            pos += _counts[i];
        }
        return mask;
    }

    /// <summary>
    /// The tightest box around the foreground as (x, y, w, h) in pixel units, each pixel a unit square; all zero for an
    /// empty mask.
    /// </summary>
    public BoxXywh ToBox()
    {
        if (Height == 0)
            return default;
        long xMin = long.MaxValue, xMax = -1, yMin = long.MaxValue, yMax = -1;
        long pos = 0;
        for (var i = 0; i < _counts.Length; i++)
        {
            var len = _counts[i];
            if (i % 2 == 1 && len > 0)
            {
                long start = pos, end = pos + len - 1;
                long x0 = start / Height, x1 = end / Height;
                xMin = Math.Min(xMin, x0);
                xMax = Math.Max(xMax, x1);
                if (x0 == x1)
                {
                    yMin = Math.Min(yMin, start % Height);
                    yMax = Math.Max(yMax, end % Height);
                }
                else
                {
                    // The run wraps into the next column, so it touches both the bottom and the top row.
                    yMin = 0;
                    yMax = Height - 1;
                }
            }
            pos += len;
        }
        return xMax < 0 ? default : new BoxXywh(xMin, yMin, xMax - xMin + 1, yMax - yMin + 1);
    }

    /// <summary>Number of pixels foreground in both masks. Both must have the same size.</summary>
    public static long IntersectionArea(Rle a, Rle b)
    {
        if (a.Height != b.Height || a.Width != b.Width)
            throw new ArgumentException($"masks of different sizes: {a.Height}x{a.Width} and {b.Height}x{b.Width}");
        var ca = a._counts;
        var cb = b._counts;
        if (ca.Length == 0 || cb.Length == 0)
            return 0;
        int ia = 0, ib = 0;
        long ra = ca[0], rb = cb[0], intersection = 0;
        while (ia < ca.Length && ib < cb.Length)
        {
            var step = Math.Min(ra, rb);
            if ((ia & 1) == 1 && (ib & 1) == 1)
                intersection += step;
            ra -= step;
            rb -= step;
            if (ra == 0 && ++ia < ca.Length)
                ra = ca[ia];
            if (rb == 0 && ++ib < cb.Length)
                rb = cb[ib];
        }
        return intersection;
    }

    /// <summary>The union of several masks of one size (COCO merges the polygons of one object this way).</summary>
    public static Rle Union(IReadOnlyList<Rle> masks)
    {
        if (masks.Count == 0)
            throw new ArgumentException("union of no masks", nameof(masks));
        if (masks.Count == 1)
            return masks[0];
        int h = masks[0].Height, w = masks[0].Width;
        var acc = new byte[(long)h * w];
        foreach (var m in masks)
        {
            if (m.Height != h || m.Width != w)
                throw new ArgumentException($"masks of different sizes: {h}x{w} and {m.Height}x{m.Width}");
            var bits = m.ToRowMajor();
            for (var i = 0; i < acc.Length; i++)
                acc[i] |= bits[i];
        }
        return FromRowMajor(acc, h, w);
    }

    /// <summary>
    /// Parses COCO's compressed RLE string: each count is written as 5-bit groups (low first) in characters offset by
    /// 48, bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign; counts after the second are
    /// stored as differences from the count two places before.
    /// </summary>
    /// <exception cref="FormatException">The string is not a valid encoding for this size.</exception>
    public static Rle FromCompressedString(string text, int height, int width)
    {
        var counts = new List<uint>();
        var p = 0;
        while (p < text.Length)
        {
            long value = 0;
            var shift = 0;
            while (true)
            {
                if (p >= text.Length)
                    throw new FormatException("compressed RLE string ends inside a count");
                var c = text[p++] - 48;
                if (c is < 0 or > 63)
                    throw new FormatException($"character '{text[p - 1]}' at {p - 1} is not part of a compressed RLE");
                if (shift > 60)
                    throw new FormatException("compressed RLE count is too long");
                value |= (long)(c & 0x1f) << shift;
                shift += 5;
                if ((c & 0x20) == 0)
                {
                    if ((c & 0x10) != 0)
                        value |= -1L << shift;
                    break;
                }
            }
            if (counts.Count > 2)
                value += counts[^2];
            if (value is < 0 or > uint.MaxValue)
                throw new FormatException($"compressed RLE decodes to an invalid run length {value}");
            counts.Add((uint)value);
        }
        try
        {
            return new Rle(height, width, counts.ToArray());
        }
        catch (ArgumentException ex)
        {
            throw new FormatException(ex.Message, ex);
        }
    }

    /// <summary>The compressed string form (see <see cref="FromCompressedString"/>).</summary>
    public string ToCompressedString()
    {
        var sb = new StringBuilder();
        for (var i = 0; i < _counts.Length; i++)
        {
            long x = _counts[i];
            if (i > 2)
                x -= _counts[i - 2];
            var more = true;
            while (more)
            {
                var c = (int)(x & 0x1f);
                x >>= 5;
                more = (c & 0x10) != 0 ? x != -1 : x != 0;
                if (more)
                    c |= 0x20;
                sb.Append((char)(c + 48));
            }
        }
        return sb.ToString();
    }

    /// <summary>
    /// Rasterises a polygon given as x0,y0,x1,y1,... in pixel coordinates (pixel centres at integer + 0.5 in the
    /// COCO convention). Follows COCO's rule: the outline is traced at 5x resolution and a pixel is inside when its
    /// centre lies between the outline's crossings of its column, so results match COCO's masks pixel for pixel
    /// for ordinary (simple or self-touching) polygons.
    /// </summary>
    public static Rle FromPolygon(IReadOnlyList<double> xy, int height, int width)
    {
        if (xy.Count % 2 != 0 || xy.Count < 6)
            throw new ArgumentException($"a polygon needs an even number of coordinates, at least 6 (got {xy.Count})", nameof(xy));
        const double scale = 5;
        var k = xy.Count / 2;
        // Vertices on the 5x grid, closed.
        var vx = new int[k + 1];
        var vy = new int[k + 1];
        for (var j = 0; j < k; j++)
        {
            vx[j] = (int)(scale * xy[2 * j] + 0.5);
            vy[j] = (int)(scale * xy[2 * j + 1] + 0.5);
        }
        vx[k] = vx[0];
        vy[k] = vy[0];

        // Dense outline: one point per step along the longer axis of each edge, always walked in increasing order of
        // that axis so an edge gives the same points whichever way it is traversed.
        var ux = new List<int>();
        var uy = new List<int>();
        for (var j = 0; j < k; j++)
        {
            int xs = vx[j], xe = vx[j + 1], ys = vy[j], ye = vy[j + 1];
            int dx = Math.Abs(xe - xs), dy = Math.Abs(ys - ye);
            var flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if (flip)
            {
                (xs, xe) = (xe, xs);
                (ys, ye) = (ye, ys);
            }
            if (dx >= dy)
            {
                var slope = dx == 0 ? 0 : (double)(ye - ys) / dx;
                for (var d = 0; d <= dx; d++)
                {
                    var t = flip ? dx - d : d;
                    ux.Add(t + xs);
                    uy.Add((int)(ys + slope * t + 0.5));
                }
            }
            else
            {
                var slope = (double)(xe - xs) / dy;
                for (var d = 0; d <= dy; d++)
                {
                    var t = flip ? dy - d : d;
                    uy.Add(t + ys);
                    ux.Add((int)(xs + slope * t + 0.5));
                }
            }
        }

        // Where the outline crosses a pixel-centre column, it toggles inside/outside at the first pixel centre at or
        // below the crossing; each crossing becomes a boundary position in column-major order.
        var boundaries = new List<long>();
        for (var j = 1; j < ux.Count; j++)
        {
            if (ux[j] == ux[j - 1])
                continue;
            double xd = ux[j] < ux[j - 1] ? ux[j] : ux[j] - 1;
            xd = (xd + 0.5) / scale - 0.5;
            if (Math.Floor(xd) != xd || xd < 0 || xd > width - 1)
                continue;
            double yd = uy[j] < uy[j - 1] ? uy[j] : uy[j - 1];
            yd = (yd + 0.5) / scale - 0.5;
            yd = Math.Ceiling(Math.Clamp(yd, 0, height));
            boundaries.Add((long)xd * height + (long)yd);
        }
        boundaries.Add((long)height * width);
        boundaries.Sort();

        // Consecutive boundaries give run lengths; an empty run means two toggles at one place, which cancel, so the
        // runs on either side merge.
        var counts = new List<uint>();
        long previous = 0;
        var first = true;
        var pendingMerge = false;
        foreach (var b in boundaries)
        {
            var len = (uint)(b - previous);
            previous = b;
            if (first)
            {
                counts.Add(len);
                first = false;
            }
            else if (pendingMerge)
            {
                counts[^1] += len;
                pendingMerge = false;
            }
            else if (len > 0)
                counts.Add(len);
            else
                pendingMerge = true;
        }
        return new Rle(height, width, counts.ToArray());
    }

    /// <summary>The union of several polygons of one object.</summary>
    public static Rle FromPolygons(IReadOnlyList<IReadOnlyList<double>> polygons, int height, int width) =>
        Union(polygons.Select(p => FromPolygon(p, height, width)).ToList());

    /// <summary>A mask that is the box (x, y, w, h) rounded to whole pixels the way a polygon of its corners is.</summary>
    public static Rle FromBox(BoxXywh box, int height, int width) =>
        FromPolygon([box.X, box.Y, box.X, box.Y + box.H, box.X + box.W, box.Y + box.H, box.X + box.W, box.Y], height, width);
}
