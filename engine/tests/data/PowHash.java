/** For each s: FNV-1a 64 over the little-endian bits of StrictMath.pow(x, s), x = 1..X, and
 *  the bits of the workload's cdf total for V = X (sum of 1 / pow(r+1, s) in rank order). */
public final class PowHash {
    public static void main(String[] a) {
        int X = Integer.parseInt(a[0]);
        for (int k = 1; k < a.length; k++) {
            double s = Double.parseDouble(a[k]);
            long h = 0xcbf29ce484222325L;
            double acc = 0.0;
            for (int x = 1; x <= X; x++) {
                double p = StrictMath.pow(x, s);
                long bits = Double.doubleToRawLongBits(p);
                for (int i = 0; i < 8; i++) { h ^= (bits >>> (8 * i)) & 0xff; h *= 0x100000001b3L; }
                acc += 1.0 / p;
            }
            System.out.printf("%s %016x %016x%n", a[k], h, Double.doubleToRawLongBits(acc));
        }
    }
}
